//! Loading secrets, and comparing with them in constant time.

use super::Scheme;
use super::config::{SecretList, SecretRef};
use ::hmac::{Hmac, KeyInit, Mac};
use base64::Engine;
use sha2::Sha256;
use std::ffi::OsString;
use std::fmt;

/// One loaded secret. `Debug` never shows it.
#[derive(Clone)]
pub(super) struct Secret {
    /// The bytes as configured (a shared token is compared with these).
    pub raw: Vec<u8>,
    /// The HMAC key: the raw bytes, or for Standard Webhooks the base64 after `whsec_`.
    pub key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Loads every secret of the list, naming `verify.secret` (or `verify.secret[i]`) in errors.
pub(super) fn load_all(
    list: &SecretList,
    scheme: &Scheme,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<Secret>, String> {
    if list.0.is_empty() {
        return Err("verify.secret: give at least one env:NAME or file:PATH".into());
    }
    let field = |i: usize| if list.0.len() == 1 { "verify.secret".to_string() } else { format!("verify.secret[{i}]") };
    list.0
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let raw = load(r, env).map_err(|e| format!("{}: {e}", field(i)))?;
            let key = hmac_key(&raw, scheme).map_err(|e| format!("{}: {e}", field(i)))?;
            Ok(Secret { raw, key })
        })
        .collect()
}

fn load(r: &SecretRef, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Vec<u8>, String> {
    let (bytes, origin) = match r {
        SecretRef::Inline => {
            return Err("inline secrets are refused (the value is not shown); write env:NAME or file:PATH".into());
        }
        SecretRef::Env(name) if name.is_empty() => return Err("env: needs a variable name".into()),
        SecretRef::File(path) if path.as_os_str().is_empty() => return Err("file: needs a path".into()),
        SecretRef::Env(name) => (from_env(name, env)?, format!("environment variable {name}")),
        SecretRef::File(path) => (from_file(path)?, format!("file {}", path.display())),
    };
    if bytes.is_empty() {
        return Err(format!("{origin} is empty"));
    }
    Ok(bytes)
}

fn from_env(name: &str, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Vec<u8>, String> {
    let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
    let text = value.into_string().map_err(|_| format!("environment variable {name} is not valid UTF-8"))?;
    Ok(text.into_bytes())
}

/// The file's bytes without trailing line ends, which editors and `echo` add.
fn from_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read file {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(bytes)
}

const WHSEC: &[u8] = b"whsec_";

/// How the base64 after `whsec_` is read: the standard alphabet, with or without its `=` padding.
/// The reference libraries disagree on padding (standardwebhooks' and Svix's Python libraries
/// append `==` themselves "in case whsecret is unpadded", Svix's Rust library decodes with
/// base64 0.13, which never required it; the Go ones require it), and a secret copied without its
/// trailing `=` is the same key, so both are accepted. Anything else (another alphabet, stray
/// characters, non-zero trailing bits) is refused: no generator writes it, and reading it
/// leniently would give a different key, hence a 401 on every delivery instead of an error now.
const WHSEC_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The key of a `whsec_<base64>` secret (the prefix is optional, as in the reference libraries).
fn whsec_key(text: &[u8]) -> Option<Vec<u8>> {
    WHSEC_BASE64.decode(text.strip_prefix(WHSEC).unwrap_or(text)).ok().filter(|key| !key.is_empty())
}

/// Standard Webhooks and Svix secrets are `whsec_` + base64 of the key. GitLab's signing token is
/// always `whsec_` + base64 (GitLab refuses to save any other, and generates a 32-byte key), so a
/// secret with that prefix is decoded and must decode; any other GitLab secret is a plain secret
/// token (`X-Gitlab-Token`), used as its bytes.
fn hmac_key(raw: &[u8], scheme: &Scheme) -> Result<Vec<u8>, String> {
    match scheme {
        Scheme::StandardWebhooks(_) => whsec_key(raw).ok_or_else(|| {
            "not a Standard Webhooks secret (whsec_ followed by the base64 of a non-empty key)".to_string()
        }),
        Scheme::Gitlab if raw.starts_with(WHSEC) => whsec_key(raw).ok_or_else(|| {
            "starts with whsec_ but is not a GitLab signing token (whsec_ followed by the base64 of its key)"
                .to_string()
        }),
        _ => Ok(raw.to_vec()),
    }
}

/// Whether HMAC(key, parts) equals one of `candidates`, for some secret. Each comparison is
/// `verify_slice`, constant-time; the MAC of the body is computed once per secret.
pub(super) fn any_matches<M: Mac + KeyInit + Clone>(
    secrets: &[Secret],
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> bool {
    secrets.iter().any(|secret| {
        let Ok(mut mac) = <M as KeyInit>::new_from_slice(&secret.key) else {
            return false;
        };
        for part in parts {
            mac.update(part);
        }
        candidates.iter().any(|c| mac.clone().verify_slice(c).is_ok())
    })
}

/// Whether `given` equals `secret`, in time independent of where they differ and of their
/// lengths: both are MACed under a fixed key and the fixed-length tags compared.
pub(super) fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let tag = |v: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"idemgate: compare a shared token")
            .expect("HMAC takes a key of any length");
        mac.update(v);
        mac
    };
    let expected = tag(secret).finalize().into_bytes();
    tag(given).verify_slice(&expected).is_ok()
}

/// Equality of two byte strings whose length is public, without an early exit.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}
