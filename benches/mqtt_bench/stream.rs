//! The byte stream of one benchmark connection: TCP, or the first bidirectional stream of a
//! QUIC connection (single-stream MQTT over QUIC, ALPN "mqtt").
//!
//! Owns: `BenchStream`, which the reader, writer and traffic code use as they would a
//! `TcpStream` (`Read`, `Write`, `try_clone`, `shutdown`, timeouts), and the QUIC client: the
//! quinn crate on a small tokio runtime of its own (the load generator is not the broker;
//! the broker never starts a runtime). Must not: verify the broker's certificate (it is a
//! throwaway one on this machine) or point anywhere but the loopback address it is given.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

static QUIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every connection opened from now on a QUIC one (`--quic`).
pub fn set_quic(on: bool) {
    QUIC.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn quic() -> bool {
    QUIC.load(std::sync::atomic::Ordering::Relaxed)
}

/// A benchmark connection's bytes.
pub enum BenchStream {
    Tcp(TcpStream),
    Quic(QuicStream),
}

impl BenchStream {
    pub fn try_clone(&self) -> io::Result<BenchStream> {
        match self {
            BenchStream::Tcp(s) => s.try_clone().map(BenchStream::Tcp),
            BenchStream::Quic(s) => Ok(BenchStream::Quic(s.clone())),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            BenchStream::Tcp(s) => s.shutdown(how),
            BenchStream::Quic(s) => {
                s.shutdown(how);
                Ok(())
            }
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BenchStream::Tcp(s) => s.set_read_timeout(timeout),
            BenchStream::Quic(s) => {
                *s.read_timeout.lock().expect("not poisoned") = timeout;
                Ok(())
            }
        }
    }
}

impl mqtt_broker::transport::ReadHalf for BenchStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        BenchStream::set_read_timeout(self, timeout)
    }
}

impl mqtt_broker::transport::WriteHalf for BenchStream {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            BenchStream::Tcp(s) => s.set_write_timeout(timeout),
            BenchStream::Quic(_) => Ok(()),
        }
    }

    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Read for BenchStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BenchStream::Tcp(s) => s.read(buf),
            BenchStream::Quic(s) => s.read(buf),
        }
    }
}

impl Write for BenchStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BenchStream::Tcp(s) => s.write(buf),
            BenchStream::Quic(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One QUIC connection's first bidirectional stream; clones share it (the reader thread
/// reads, the writer thread writes).
#[derive(Clone)]
pub struct QuicStream {
    connection: quinn::Connection,
    send: Arc<Mutex<quinn::SendStream>>,
    recv: Arc<Mutex<quinn::RecvStream>>,
    read_timeout: Arc<Mutex<Option<Duration>>>,
}

struct Client {
    runtime: tokio::runtime::Runtime,
    endpoints: Vec<quinn::Endpoint>,
    next: std::sync::atomic::AtomicUsize,
}

/// Clients are spread over this many UDP sockets (each with its own driver task).
const ENDPOINTS: usize = 4;

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quic-client")
            .enable_all()
            .build()
            .expect("a tokio runtime for the QUIC client");
        let config = client_config();
        let endpoints = (0..ENDPOINTS)
            .map(|_| {
                let _guard = runtime.enter();
                let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .expect("a UDP socket for the QUIC client");
                endpoint.set_default_client_config(config.clone());
                endpoint
            })
            .collect();
        Client {
            runtime,
            endpoints,
            next: Default::default(),
        }
    })
}

fn client_config() -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    config
}

/// Opens a QUIC connection to `addr` and its first bidirectional stream.
pub fn connect_quic(addr: SocketAddr, timeout: Duration) -> Result<BenchStream, String> {
    let client = client();
    let n = client
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let endpoint = client.endpoints[n % ENDPOINTS].clone();
    let opened = client.runtime.block_on(async move {
        tokio::time::timeout(timeout, async move {
            let connection = endpoint
                .connect(addr, "localhost")
                .map_err(|e| format!("QUIC connect {addr}: {e}"))?
                .await
                .map_err(|e| format!("QUIC connect {addr}: {e}"))?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|e| format!("QUIC stream: {e}"))?;
            Ok::<_, String>((connection, send, recv))
        })
        .await
        .map_err(|_| format!("QUIC connect {addr}: timed out"))?
    })?;
    let (connection, send, recv) = opened;
    Ok(BenchStream::Quic(QuicStream {
        connection,
        send: Arc::new(Mutex::new(send)),
        recv: Arc::new(Mutex::new(recv)),
        read_timeout: Arc::new(Mutex::new(Some(timeout))),
    }))
}

impl QuicStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = *self.read_timeout.lock().expect("not poisoned");
        let mut recv = self.recv.lock().expect("not poisoned");
        let read = recv.read(buf);
        let result = client().runtime.block_on(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, read)
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?,
                None => read.await,
            }
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))
        })?;
        Ok(result.unwrap_or(0))
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut send = self.send.lock().expect("not poisoned");
        client()
            .runtime
            .block_on(send.write(buf))
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))
    }

    fn shutdown(&self, how: Shutdown) {
        match how {
            Shutdown::Write => {
                if let Ok(mut send) = self.send.try_lock() {
                    let _ = send.finish();
                }
            }
            _ => self.connection.close(0u32.into(), b""),
        }
    }
}

/// Accepts any certificate: the benchmark talks to a broker on this machine with a throwaway
/// certificate.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
