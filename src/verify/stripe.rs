//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>,v1=<hex>,v0=<hex>`.
//!
//! The signed payload is `{t}.{body}`, HMAC-SHA256, hex. Only `v1` counts (Stripe adds a fake
//! `v0` to test-mode events; other schemes are ignored against downgrades). Several `v1` appear
//! while an endpoint secret is rolled; any of them matching any secret is enough. The timestamp
//! must be within the tolerance, checked after the signature, as Stripe's libraries do.

use super::parse::{MAX_SIGNATURES, check_age, check_len, hex, malformed, single_header, timestamp};
use super::secret::{Secret, any_matches};
use super::{SignedRequest, VerifyError};
use ::hmac::Hmac;
use sha2::Sha256;

const HEADER: &str = "Stripe-Signature";
const WHAT: &str = "header Stripe-Signature";

pub(super) fn verify(secrets: &[Secret], tolerance: u64, req: &SignedRequest<'_>) -> Result<(), VerifyError> {
    let (t_text, signatures) = parse(single_header(req.headers, HEADER)?)?;
    let t = timestamp(t_text, WHAT)?;
    if !any_matches::<Hmac<Sha256>>(secrets, &[t_text.as_bytes(), b".", req.body], &signatures) {
        return Err(VerifyError::NoMatch);
    }
    check_age(t, req.now_unix, tolerance, HEADER)
}

/// The `t` text and the decoded `v1` signatures.
fn parse(value: &str) -> Result<(&str, Vec<Vec<u8>>), VerifyError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for element in value.split(',') {
        let (prefix, text) =
            element.trim().split_once('=').ok_or_else(|| malformed(WHAT, "an element is not key=value"))?;
        match prefix {
            "t" if t.is_some() => return Err(malformed(WHAT, "t= is given more than once")),
            "t" => t = Some(text),
            "v1" if v1.len() == MAX_SIGNATURES => return Err(malformed(WHAT, "too many v1 signatures")),
            "v1" => {
                v1.push(check_len(hex(text).ok_or_else(|| malformed(WHAT, "a v1 signature is not hex"))?, 32, WHAT)?)
            }
            _ => {}
        }
    }
    let t = t.ok_or_else(|| malformed(WHAT, "there is no t= timestamp"))?;
    if v1.is_empty() {
        return Err(malformed(WHAT, "there is no v1 signature"));
    }
    Ok((t, v1))
}
