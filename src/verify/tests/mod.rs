//! Verification, driven by tables. Expected signatures are computed here with the hmac crate from
//! each provider's documented algorithm (`sign_*`), and published worked examples are checked as
//! fixed vectors (`vectors.rs`).

mod config;
mod edges;
mod schemes;
mod vectors;

use super::{Scheme, SignedRequest, Verifier, VerifyConfig};
use ::hmac::{Hmac, KeyInit, Mac};
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use std::collections::HashMap;
use std::ffi::OsString;

/// The injected clock of every test request.
pub const NOW: i64 = 1_718_000_000;
pub const NEW: &[u8] = b"new-secret-4f9c2e7a1b60";
pub const OLD: &[u8] = b"old-secret-8d3e6a0c5f27";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../tests/fixtures/webhooks/", $name)).as_slice()
    };
}
pub(crate) use fixture;

/// An owned request; [`Req::signed`] lends it out as a [`SignedRequest`].
#[derive(Clone)]
pub struct Req {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub now: i64,
}

impl Req {
    pub fn post(body: &[u8]) -> Req {
        Req {
            method: Method::POST,
            uri: Uri::from_static("/hook"),
            headers: HeaderMap::new(),
            body: body.to_vec(),
            now: NOW,
        }
    }

    pub fn uri(mut self, uri: &str) -> Req {
        self.uri = uri.parse().unwrap();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        self
    }

    pub fn signed(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body: &self.body,
            now_unix: self.now,
        }
    }
}

pub fn mac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

pub fn mac1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).unwrap();
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", b64(key))
}

pub fn config(yaml: &str) -> VerifyConfig {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// Compiles `yaml` with an environment holding exactly `env`.
pub fn compile(yaml: &str, preset: Option<&Scheme>, env: &[(&str, &str)]) -> Result<Verifier, String> {
    let env: HashMap<String, OsString> = env.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
    Verifier::compile_with(&config(yaml), preset, &|name| env.get(name).cloned())
}
