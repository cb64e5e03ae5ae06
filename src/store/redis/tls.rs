//! `rediss://` with `store.redis.tls`: the PEM files are read and checked here, at open, so that a
//! missing or malformed one fails the start by its field's name; redis-rs builds the rustls
//! config from them (trusting `ca_file`, or the system's roots) and verifies the server's chain and
//! host name on every connection.

use crate::config::RedisConfig;
use crate::store::tls::{self, TlsError};
use ::redis::{ClientTlsConfig, TlsCertificates};

const CA_FILE: &str = "store.redis.tls.ca_file";
const CERT_FILE: &str = "store.redis.tls.cert_file";
const KEY_FILE: &str = "store.redis.tls.key_file";

/// The certificates to hand redis-rs, or `None` when it should use its defaults (a `redis://`
/// url, or `rediss://` without a `tls` section: the system's roots, no client certificate).
pub(super) fn certificates(cfg: &RedisConfig) -> Result<Option<TlsCertificates>, TlsError> {
    let Some(files) = cfg.tls.as_ref().filter(|_| cfg.uses_tls()) else { return Ok(None) };
    let root_cert = match &files.ca_file {
        Some(path) => {
            tls::read_certificates(CA_FILE, path)?;
            Some(tls::read(CA_FILE, path)?)
        }
        None => None,
    };
    let client_tls = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            tls::read_certificates(CERT_FILE, cert)?;
            tls::read_key(KEY_FILE, key)?;
            Some(ClientTlsConfig { client_cert: tls::read(CERT_FILE, cert)?, client_key: tls::read(KEY_FILE, key)? })
        }
        // Config validation refuses one without the other.
        _ => None,
    };
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

/// For `idemgate check`: `tls, ca: /etc/ca.pem, client cert: ...`, `tls, system roots`, or
/// `no tls`.
pub fn describe(cfg: &RedisConfig) -> String {
    if !cfg.uses_tls() {
        return "no tls".into();
    }
    let files = cfg.tls.clone().unwrap_or_default();
    let mut text = match &files.ca_file {
        Some(path) => format!("tls, ca: {}", path.display()),
        None => "tls, system roots".to_string(),
    };
    if let Some(cert) = &files.cert_file {
        text.push_str(&format!(", client cert: {}", cert.display()));
    }
    text
}
