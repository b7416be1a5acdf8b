//! TLS towards the remote broker: the rustls client configuration a bridge's `bridge_*` TLS
//! options describe.
//!
//! Owns: loading `bridge_cafile`/`bridge_capath` (the CAs the remote's certificate must chain
//! to), `bridge_certfile`/`bridge_keyfile` (our client certificate), `bridge_insecure` (the
//! chain is still verified, the host name is not, as mosquitto means it) and `bridge_alpn`.
//! Must not: do I/O beyond reading those files; the handshake is `transport::tls_client`'s.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::config::BridgeTls;

/// Whether the bridge speaks TLS: as mosquitto, once a CA file or directory is given.
pub fn enabled(tls: &BridgeTls) -> bool {
    tls.cafile.is_some() || tls.capath.is_some()
}

fn invalid(what: &str, path: &Path, e: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} {}: {e}", path.display()),
    )
}

/// The client configuration for `tls` (which `enabled` says is on).
pub fn client_config(tls: &BridgeTls) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let mut add = |path: &Path| -> io::Result<()> {
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| invalid("bridge CA", path, e))?
        {
            let cert = cert.map_err(|e| invalid("bridge CA", path, e))?;
            roots.add(cert).map_err(|e| invalid("bridge CA", path, e))?;
        }
        Ok(())
    };
    if let Some(cafile) = &tls.cafile {
        add(cafile)?;
    }
    if let Some(capath) = &tls.capath {
        for entry in std::fs::read_dir(capath).map_err(|e| invalid("bridge_capath", capath, e))? {
            let path = entry?.path();
            if path.is_file() {
                // Not every file of a CA directory is a certificate (OpenSSL's hash links are).
                let _ = add(&path);
            }
        }
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bridge_cafile/bridge_capath hold no CA certificate",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure {
        Arc::new(AnyHostName(verifier))
    } else {
        verifier
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.certfile, &tls.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let certs = CertificateDer::pem_file_iter(certfile)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid("bridge_certfile", certfile, e))?;
            let key = PrivateKeyDer::from_pem_file(keyfile)
                .map_err(|e| invalid("bridge_keyfile", keyfile, e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid("bridge_certfile", certfile, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    if let Some(alpn) = &tls.alpn {
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    }
    Ok(Arc::new(config))
}

/// The name rustls checks the remote's certificate against: the address as configured.
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}")))
}

/// `bridge_insecure true`: the chain is verified as usual, a certificate for another host name
/// is accepted.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
