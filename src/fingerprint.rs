//! Stage `fingerprint`: a digest of the payload, stored with the claim, so that a key reused
//! with a different payload is refused (422) instead of answered with another request's response.

use crate::config::FingerprintSpec;
use crate::json::check_pointer;
use crate::key::{KeyError, RequestView};
use sha2::{Digest, Sha256};

pub type Fingerprint = [u8; 32];

#[derive(Debug, Clone)]
pub enum Fingerprinter {
    None,
    /// The body bytes exactly as received.
    Body,
    /// The canonical JSON of the selected members (missing ones count as null), so that
    /// re-serialization by a provider or a harmless extra field does not count as a change.
    Json(Vec<String>),
}

impl Fingerprinter {
    pub fn compile(spec: &FingerprintSpec) -> Result<Fingerprinter, String> {
        Ok(match spec {
            FingerprintSpec::None => Fingerprinter::None,
            FingerprintSpec::Body => Fingerprinter::Body,
            FingerprintSpec::Json(pointers) if pointers.is_empty() => {
                return Err("json: list at least one pointer".into());
            }
            FingerprintSpec::Json(pointers) => {
                pointers.iter().try_for_each(|p| check_pointer(p))?;
                Fingerprinter::Json(pointers.clone())
            }
        })
    }

    pub fn reads_body(&self) -> bool {
        !matches!(self, Fingerprinter::None)
    }

    pub fn compute(&self, req: &RequestView<'_>) -> Result<Option<Fingerprint>, KeyError> {
        match self {
            Fingerprinter::None => Ok(None),
            Fingerprinter::Body => Ok(Some(Sha256::digest(req.body()).into())),
            Fingerprinter::Json(pointers) => {
                let tree = req.json()?;
                let mut canonical = Vec::new();
                for pointer in pointers {
                    match tree.lookup(pointer) {
                        Ok(Some(v)) => v.canonical(&mut canonical),
                        Ok(None) => canonical.extend_from_slice(b"null"),
                        Err(_) => {
                            return Err(KeyError::Duplicate(format!("json member {pointer}")));
                        }
                    }
                    canonical.push(b'\n');
                }
                Ok(Some(Sha256::digest(&canonical).into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fp(f: &Fingerprinter, body: &str) -> Option<Fingerprint> {
        let headers = http::HeaderMap::new();
        let body = Bytes::from(body.to_string());
        f.compute(&RequestView::new(&headers, None, &body)).unwrap()
    }

    #[test]
    fn body_fingerprint_is_byte_exact() {
        let f = Fingerprinter::Body;
        assert_eq!(fp(&f, "{\"a\":1}"), fp(&f, "{\"a\":1}"));
        assert_ne!(fp(&f, "{\"a\":1}"), fp(&f, "{\"a\": 1}"));
    }

    #[test]
    fn json_fingerprint_looks_at_selected_members_only() {
        let f = Fingerprinter::Json(vec!["/amount".into(), "/currency".into()]);
        let a = fp(&f, r#"{"amount":5,"currency":"eur","ts":1}"#);
        assert_eq!(a, fp(&f, r#"{"currency":"eur", "ts":2, "amount":5}"#));
        assert_ne!(a, fp(&f, r#"{"amount":6,"currency":"eur"}"#));
        assert_eq!(fp(&Fingerprinter::None, "x"), None);
    }
}
