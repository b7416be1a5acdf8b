//! TLS with rustls on the broker's two threads per client.
//!
//! Owns: building a rustls `ServerConfig` from a listener's `TlsSettings` (and building it again
//! on `reload`), the handshake (on the connection's reader thread, before the writer exists,
//! bounded by a deadline), and the two halves that share one rustls `Connection` afterwards (a
//! listener's server side, or the client side a bridge dials with `connect`).
//!
//! Must not: hold the session lock across a blocking socket read or write. The read half reads
//! ciphertext from the socket into its own buffer without the lock, then takes the lock only to
//! feed those bytes to rustls and copy plaintext out. The write half takes the lock only to
//! encrypt into its own buffer, then writes that buffer to the socket without the lock. So the
//! writer stays the only one writing the socket, and output that rustls produces while reading
//! (alerts, key updates) waits in the session until the writer's next write or a `Waker` call.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{Connection, RootCertStore, ServerConfig, ServerConnection, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::{certificate, Output, ReadHalf, Transport, Waker, WriteHalf};
use crate::config::TlsSettings;

/// Ciphertext read from the socket at a time, before rustls sees it (rustls takes 4 KiB at a
/// time into its own buffer).
const READ_CHUNK: usize = 8 * 1024;
/// rustls's limit on received plaintext waiting to be read: beyond it, `read_tls` refuses more
/// ciphertext (its default, which rustls does not export).
const PLAINTEXT_LIMIT: usize = 16 * 1024;
/// An encryption buffer grown beyond this by a burst is given back afterwards.
const KEEP_OUT: usize = 32 * 1024;

/// One TLS listener's settings, loaded. Cheap to use from many threads.
pub struct TlsAcceptor {
    settings: TlsSettings,
    config: Mutex<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    pub fn new(settings: &TlsSettings) -> io::Result<TlsAcceptor> {
        let config = server_config(settings)?;
        Ok(TlsAcceptor {
            settings: settings.clone(),
            config: Mutex::new(Arc::new(config)),
        })
    }

    /// Loads every file again; the old configuration stays if that fails.
    pub fn reload(&self) -> io::Result<()> {
        let config = server_config(&self.settings)?;
        *self.config.lock() = Arc::new(config);
        log::info!(
            "TLS certificate {} reloaded",
            self.settings.certfile.display()
        );
        Ok(())
    }

    /// Runs the handshake on `socket` until `deadline`, then splits the session in two.
    pub(super) fn accept(
        &self,
        socket: Arc<TcpStream>,
        deadline: Instant,
    ) -> io::Result<Transport> {
        let config = Arc::clone(&self.config.lock());
        let mut conn = Connection::from(ServerConnection::new(config).map_err(invalid)?);
        handshake(&mut conn, &socket, deadline)?;
        let certificate_username = self.username(&conn)?;
        Ok(transport(socket, conn, certificate_username))
    }

    /// The username the client certificate gives, when the listener asks for one.
    fn username(&self, conn: &Connection) -> io::Result<Option<String>> {
        let settings = &self.settings;
        if !settings.use_identity_as_username && !settings.use_subject_as_username {
            return Ok(None);
        }
        let Some(der) = conn.peer_certificates().and_then(|chain| chain.first()) else {
            return Err(invalid("no client certificate to take the username from"));
        };
        let subject = certificate::subject(der)
            .ok_or_else(|| invalid("cannot read the client certificate's subject"))?;
        if settings.use_subject_as_username {
            return Ok(Some(subject.rfc2253()));
        }
        match subject.common_name() {
            Some(name) => Ok(Some(name)),
            None => Err(invalid("the client certificate has no common name")),
        }
    }
}

/// The two halves of a TLS connection whose handshake is done, sharing its session.
pub(super) fn split(
    conn: Connection,
    socket: Arc<TcpStream>,
) -> (Box<dyn ReadHalf>, Box<dyn WriteHalf>) {
    let session = Arc::new(Mutex::new(conn));
    let input = Box::new(TlsRead {
        session: Arc::clone(&session),
        socket: Arc::clone(&socket),
        leftover: Vec::new(),
        waker: None,
    });
    let output = Box::new(TlsWrite {
        session,
        socket,
        out: Vec::new(),
    });
    (input, output)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "took too long"));
    }
    Ok(left)
}

/// A TLS connection whose handshake is done (server or client side), as a `Transport`.
fn transport(
    socket: Arc<TcpStream>,
    conn: Connection,
    certificate_username: Option<String>,
) -> Transport {
    let (input, write) = split(conn, Arc::clone(&socket));
    Transport {
        input,
        output: Output {
            write,
            link: socket,
        },
        certificate_username,
    }
}

/// Runs `conn`'s handshake on `socket` until `deadline`: the reads and writes it needs, each
/// bounded by the time left. A failure sends the alert that tells the peer why.
fn handshake(conn: &mut Connection, socket: &TcpStream, deadline: Instant) -> io::Result<()> {
    let mut sock = socket;
    loop {
        while conn.wants_write() {
            socket.set_write_timeout(Some(remaining(deadline)?))?;
            conn.write_tls(&mut sock)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        socket.set_read_timeout(Some(remaining(deadline)?))?;
        if conn.read_tls(&mut sock)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Err(e) = conn.process_new_packets() {
            let _ = conn.write_tls(&mut sock);
            return Err(invalid(e));
        }
    }
}

/// The client side (a bridge to a remote broker): runs the handshake of `conn` on `socket`
/// until `deadline`, then splits the session in two as for an accepted connection.
pub fn connect(
    socket: Arc<TcpStream>,
    conn: rustls::ClientConnection,
    deadline: Instant,
) -> io::Result<Transport> {
    let mut conn = Connection::from(conn);
    handshake(&mut conn, &socket, deadline)?;
    Ok(transport(socket, conn, None))
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {e}", path.display()),
    )
}

/// Builds the rustls configuration `settings` describe, reading every file it names.
pub(super) fn server_config(settings: &TlsSettings) -> io::Result<ServerConfig> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(settings.ciphers.as_deref()),
        ..rustls::crypto::ring::default_provider()
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.tls_version.as_deref() {
        None | Some("tlsv1.2") => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Some("tlsv1.3") => &[&rustls::version::TLS13],
        Some("tlsv1" | "tlsv1.1") => {
            warn!("tls_version below tlsv1.2 is not supported (rustls); tlsv1.2 is the lowest");
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        }
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tls_version {other}: expected tlsv1.2 or tlsv1.3"),
            ))
        }
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(invalid)?;
    let roots = ca_roots(settings)?;
    let builder = match roots {
        None if settings.require_certificate => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "require_certificate needs cafile or capath",
            ))
        }
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crlfile) = &settings.crlfile {
                let crls = CertificateRevocationListDer::pem_file_iter(crlfile)
                    .map_err(|e| read_error(crlfile, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| read_error(crlfile, e))?;
                verifier = verifier.with_crls(crls);
            }
            if !settings.require_certificate {
                // A certificate is checked when offered, as mosquitto does, but not required.
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(invalid)?)
        }
    };
    let certs = CertificateDer::pem_file_iter(&settings.certfile)
        .map_err(|e| read_error(&settings.certfile, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(&settings.certfile, e))?;
    if certs.is_empty() {
        return Err(read_error(&settings.certfile, "no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.keyfile)
        .map_err(|e| read_error(&settings.keyfile, e))?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| read_error(&settings.keyfile, e))?;
    // No TLS 1.3 tickets: a client that reconnects does a full handshake, and a connection
    // costs no write and no cache entry beyond its own session.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The CA certificates of `cafile` and `capath`, if either is set.
fn ca_roots(settings: &TlsSettings) -> io::Result<Option<RootCertStore>> {
    if settings.cafile.is_none() && settings.capath.is_none() {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    let mut add = |path: &Path, strict: bool| -> io::Result<()> {
        let certs = match CertificateDer::pem_file_iter(path) {
            Ok(certs) => certs,
            Err(e) if strict => return Err(read_error(path, e)),
            Err(_) => return Ok(()),
        };
        for cert in certs {
            match cert {
                Ok(cert) => roots.add(cert).map_err(|e| read_error(path, e))?,
                Err(e) if strict => return Err(read_error(path, e)),
                Err(_) => {}
            }
        }
        Ok(())
    };
    if let Some(cafile) = &settings.cafile {
        add(cafile, true)?;
    }
    if let Some(capath) = &settings.capath {
        // Every readable PEM file of the directory (OpenSSL's hashed links included).
        for entry in std::fs::read_dir(capath).map_err(|e| read_error(capath, e))? {
            let path = entry?.path();
            if path.is_file() {
                add(&path, false)?;
            }
        }
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cafile/capath hold no CA certificate",
        ));
    }
    Ok(Some(roots))
}

/// The suites `ciphers` names, version by version: a version none of whose suites is named
/// keeps all of its suites (as mosquitto's `ciphers` leaves TLS 1.3 alone). OpenSSL names
/// (`ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_128_GCM_SHA256`) and IANA names are understood;
/// OpenSSL's keywords and operators (`HIGH`, `!aNULL`, `@STRENGTH`) are not, and are logged.
fn cipher_suites(ciphers: Option<&str>) -> Vec<SupportedCipherSuite> {
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    let Some(ciphers) = ciphers else {
        return all.to_vec();
    };
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    for name in ciphers.split([':', ',', ' ']).filter(|n| !n.is_empty()) {
        let iana = openssl_to_iana(name);
        match all.iter().find(|s| format!("{:?}", s.suite()) == iana) {
            Some(suite) if !chosen.contains(suite) => chosen.push(*suite),
            Some(_) => {}
            None => warn!("ciphers: {name} is not supported by rustls; ignored"),
        }
    }
    let is13 = |s: &SupportedCipherSuite| s.version() == &rustls::version::TLS13;
    for version13 in [true, false] {
        if !chosen.iter().any(|s| is13(s) == version13) {
            chosen.extend(all.iter().filter(|s| is13(s) == version13));
        }
    }
    chosen
}

/// rustls's name for an OpenSSL (or IANA) cipher suite name.
fn openssl_to_iana(name: &str) -> String {
    let table = [
        ("TLS_AES_128_GCM_SHA256", "TLS13_AES_128_GCM_SHA256"),
        ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256",
        ),
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ),
    ];
    table
        .iter()
        .find(|(openssl, _)| openssl.eq_ignore_ascii_case(name))
        .map(|(_, iana)| (*iana).to_owned())
        .unwrap_or_else(|| name.to_ascii_uppercase())
}

/// The reader thread's half: ciphertext in, plaintext out.
struct TlsRead {
    session: Arc<Mutex<Connection>>,
    socket: Arc<TcpStream>,
    /// Ciphertext read but not yet given to rustls (rarely any: see `feed`).
    leftover: Vec<u8>,
    waker: Option<Waker>,
}

impl Read for TlsRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut conn = self.session.lock();
            match conn.reader().read(buf) {
                // Ok(0): the peer's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !self.leftover.is_empty() {
                let leftover = std::mem::take(&mut self.leftover);
                let fed = feed(&mut conn, &leftover, &mut self.leftover);
                self.wake_if_output(conn);
                fed?;
                continue;
            }
            drop(conn);
            // Nothing buffered: wait for the socket, without the lock. On the stack, whose
            // pages the handshake has touched already, rather than a buffer per connection.
            let mut chunk = [0u8; READ_CHUNK];
            let n = (&*self.socket).read(&mut chunk)?;
            let mut conn = self.session.lock();
            if n == 0 {
                // Tells rustls the peer has gone: the plaintext read says how (a clean
                // close_notify reads as 0, a cut connection as UnexpectedEof).
                let _ = conn.read_tls(&mut io::empty());
                return match conn.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
            let fed = feed(&mut conn, &chunk[..n], &mut self.leftover);
            self.wake_if_output(conn);
            fed?;
        }
    }
}

impl TlsRead {
    /// Releases the lock, and has the writer send what reading made rustls want to send.
    fn wake_if_output(&self, conn: parking_lot::MutexGuard<'_, Connection>) {
        let wants_write = conn.wants_write();
        drop(conn);
        if wants_write {
            if let Some(wake) = &self.waker {
                wake();
            }
        }
    }
}

/// Gives `bytes` to rustls (many small records at once, typically). Once more plaintext waits
/// than rustls accepts more ciphertext for, the rest goes to `leftover`, fed after that
/// plaintext has been read: rare, and then after at least 16 KiB of plaintext.
fn feed(conn: &mut Connection, mut bytes: &[u8], leftover: &mut Vec<u8>) -> io::Result<()> {
    while !bytes.is_empty() {
        if conn.read_tls(&mut bytes)? == 0 {
            // rustls takes nothing more once it has seen the peer's close_notify.
            return Err(invalid("data after close_notify"));
        }
        let state = conn.process_new_packets().map_err(invalid)?;
        if state.plaintext_bytes_to_read() > PLAINTEXT_LIMIT && !bytes.is_empty() {
            leftover.extend_from_slice(bytes);
            break;
        }
    }
    Ok(())
}

impl ReadHalf for TlsRead {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    fn set_waker(&mut self, waker: Waker) {
        self.waker = Some(waker);
    }
}

/// The writer thread's half: plaintext in, ciphertext to the socket.
struct TlsWrite {
    session: Arc<Mutex<Connection>>,
    socket: Arc<TcpStream>,
    /// Ciphertext made under the lock and written after it.
    out: Vec<u8>,
}

impl TlsWrite {
    /// Encrypts (under the lock) what `fill` gives, plus anything rustls has waiting.
    fn seal<T>(&mut self, fill: impl FnOnce(&mut Connection) -> io::Result<T>) -> io::Result<T> {
        let mut conn = self.session.lock();
        let result = fill(&mut conn)?;
        while conn.wants_write() {
            conn.write_tls(&mut self.out)?;
        }
        Ok(result)
    }

    /// Writes the sealed ciphertext, without the lock.
    fn send(&mut self) -> io::Result<()> {
        let result = (&*self.socket).write_all(&self.out);
        self.out.clear();
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
        result
    }
}

impl Write for TlsWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.seal(|conn| conn.writer().write(buf))?;
        self.send()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seal(|_| Ok(()))?;
        self.send()
    }
}

impl WriteHalf for TlsWrite {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }

    fn close(&mut self) {
        let _ = self.socket.set_write_timeout(Some(super::GOODBYE_TIMEOUT));
        if self
            .seal(|conn| {
                conn.send_close_notify();
                Ok(())
            })
            .is_ok()
        {
            let _ = self.send();
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(suites: &[SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn ciphers_name_tls12_suites_and_leave_tls13_whole() {
        let chosen = names(&cipher_suites(Some(
            "ECDHE-RSA-AES256-GCM-SHA384:HIGH:!aNULL",
        )));
        assert!(chosen.contains(&"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_owned()));
        assert!(!chosen.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()));
        assert_eq!(chosen.iter().filter(|n| n.starts_with("TLS13")).count(), 3);
    }

    #[test]
    fn ciphers_name_tls13_suites_in_openssl_spelling() {
        let chosen = names(&cipher_suites(Some("TLS_CHACHA20_POLY1305_SHA256")));
        let tls13: Vec<_> = chosen.iter().filter(|n| n.starts_with("TLS13")).collect();
        assert_eq!(tls13, ["TLS13_CHACHA20_POLY1305_SHA256"]);
        assert!(chosen.len() > 1, "TLS 1.2 suites stay");
    }

    #[test]
    fn no_ciphers_means_every_suite() {
        assert_eq!(
            cipher_suites(None).len(),
            rustls::crypto::ring::ALL_CIPHER_SUITES.len()
        );
    }
}
