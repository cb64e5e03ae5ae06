//! TLS to the shared stores (PostgreSQL, Redis), on rustls with the ring provider: the image is
//! distroless, so there is no system OpenSSL to link against.
//!
//! What is trusted: the CA certificates of a PEM file the config names, or, without one, the
//! system's roots (`rustls-native-certs`: the OS bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
//! How much is checked is a [`Verify`]: the whole certificate (chain and host name), the chain
//! only, or, for PostgreSQL's opportunistic `sslmode=prefer` alone, nothing.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS setting cannot be used. Each names the setting (`field`) and the file, never a
/// secret: a key file's contents are not echoed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {}: cannot read: {source}", path.display())]
    Read { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{field} {}: no PEM certificate in it", path.display())]
    NoCertificate { field: &'static str, path: PathBuf },
    #[error("{field} {}: not a PEM certificate file: {reason}", path.display())]
    BadCertificate { field: &'static str, path: PathBuf, reason: String },
    #[error("{field} {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { field: &'static str, path: PathBuf },
    #[error("no system root certificates could be loaded ({0}); name a CA file")]
    NoSystemRoots(String),
    #[error("the client certificate and key cannot be used together: {0}")]
    ClientIdentity(rustls::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Which certificate authorities the server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's trust store.
    System,
    /// The certificates of this PEM file (`field` names the setting, for messages).
    File { field: &'static str, path: PathBuf },
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The chain to a trusted root, validity dates, and the host name connected to.
    Full,
    /// The chain and dates, not the host name (`sslmode=verify-ca`).
    ChainOnly,
    /// Nothing: encryption against passive listeners only (`sslmode=prefer`, as libpq).
    Nothing,
}

/// A client certificate and its key (PEM files), for servers that authenticate clients by them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: (&'static str, PathBuf),
    pub key: (&'static str, PathBuf),
}

/// The one crypto provider compiled in. rustls deprecates ring's for lacking post-quantum key
/// exchange, which only aws-lc-rs offers; that one is a large C build (and a second provider
/// would leave redis-rs without a default), so ring stays until the store links need it.
#[allow(deprecated)]
fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider())
}

/// Makes ring the process default, for libraries that build their own rustls config from it
/// (redis-rs). Idempotent; a default installed earlier stays.
pub fn install_default_provider() {
    let _ = ring_provider().install_default();
}

/// A client config that verifies as `verify` says, trusting `roots`, presenting `identity`.
pub fn client_config(
    verify: Verify,
    roots: &Roots,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Unverified(provider.signature_verification_algorithms)),
        Verify::Full => webpki_verifier(roots, provider.clone())?,
        Verify::ChainOnly => Arc::new(ChainOnly(webpki_verifier(roots, provider.clone())?)),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => {
            let (certs, key) = load_identity(identity)?;
            builder.with_client_auth_cert(certs, key).map_err(TlsError::ClientIdentity)
        }
    }
}

fn webpki_verifier(roots: &Roots, provider: Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
}

/// The trust anchors `roots` names.
pub fn root_store(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File { field, path } => {
            for cert in read_certificates(field, path)? {
                store.add(cert).map_err(|e| bad_certificate(field, path, e))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            // Unparseable entries in a system bundle are skipped, as every TLS client does.
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| e.to_string()).unwrap_or_else(|| "the store is empty".into());
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// Every certificate of a PEM file; at least one.
pub fn read_certificates(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_certificate(field, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { field, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The first private key of a PEM file. A parse error is not echoed: it could quote the key.
pub fn read_key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey { field, path: path.to_path_buf() })
}

fn load_identity(
    identity: &ClientIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (cert_field, cert_path) = &identity.cert;
    let (key_field, key_path) = &identity.key;
    Ok((read_certificates(cert_field, cert_path)?, read_key(key_field, key_path)?))
}

/// A file's bytes, the error naming the setting that named the file.
pub fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { field, path: path.to_path_buf(), source })
}

fn bad_certificate(field: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::BadCertificate { field, path: path.to_path_buf(), reason: reason.to_string() }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root, whatever host name it is for.
/// webpki checks the chain before the name, so a name mismatch is reported only for a chain that
/// has already been verified: that one error is forgiven.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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

/// `sslmode=prefer`: any certificate is accepted (libpq's `prefer` verifies nothing either, and
/// an active attacker could refuse TLS and be answered in plain text anyway). The handshake's
/// signatures are still checked, so the session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn unusable_files_are_named_by_their_setting_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let empty = file(dir.path(), "empty.pem", "not PEM at all\n");
        // Not valid base64, so the parse fails on the key's own bytes.
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!*\n-----END PRIVATE KEY-----\n";
        let bad_key = file(dir.path(), "bad.key", secret);
        let cases: [(Result<(), TlsError>, &str); 4] = [
            (read_certificates("sslrootcert", &dir.path().join("missing.pem")).map(drop), "sslrootcert"),
            (read_certificates("store.redis.tls.ca_file", &empty).map(drop), "no PEM certificate"),
            (read_key("sslkey", &bad_key).map(drop), "sslkey"),
            (read_key("store.redis.tls.key_file", &empty).map(drop), "no PEM private key"),
        ];
        for (result, want) in cases {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(want), "{want:?} not in {message:?}");
            assert!(!message.contains("c2VjcmV0"), "a key's contents leaked: {message}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::File { field: "sslrootcert", path: file(dir.path(), "ca.pem", "") };
        for verify in [Verify::Full, Verify::ChainOnly] {
            assert!(matches!(client_config(verify, &roots, None), Err(TlsError::NoCertificate { .. })));
        }
        // `prefer` verifies nothing, so it reads no roots at all.
        assert!(client_config(Verify::Nothing, &roots, None).is_ok());
    }
}
