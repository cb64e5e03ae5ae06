//! Standard Webhooks (standardwebhooks.com), also Svix's scheme and GitLab's signing token.
//!
//! `webhook-signature` is a space-separated list of `v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the base64 after `whsec_` (padded or
//! not, as the reference libraries read it; see `secret::WHSEC_BASE64`). Entries of
//! other versions (`v1a` is an ed25519 signature) are skipped; a list without any `v1` is refused.

use super::parse::{MAX_SIGNATURES, base64, check_age, check_len, malformed, single_header, timestamp};
use super::secret::{Secret, any_matches};
use super::{SignedRequest, StandardHeaders, VerifyError};
use ::hmac::Hmac;
use sha2::Sha256;

pub(super) fn verify(
    names: &StandardHeaders,
    secrets: &[Secret],
    tolerance: u64,
    req: &SignedRequest<'_>,
) -> Result<(), VerifyError> {
    let id = single_header(req.headers, names.id)?;
    let ts_text = single_header(req.headers, names.timestamp)?;
    let signatures = parse(single_header(req.headers, names.signature)?, names.signature)?;
    let ts = timestamp(ts_text, &format!("header {}", names.timestamp))?;
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", req.body];
    if !any_matches::<Hmac<Sha256>>(secrets, &parts, &signatures) {
        return Err(VerifyError::NoMatch);
    }
    check_age(ts, req.now_unix, tolerance, names.timestamp)
}

fn parse(value: &str, header: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let what = format!("header {header}");
    let mut v1 = Vec::new();
    for entry in value.split(' ').filter(|e| !e.is_empty()) {
        let (version, sig) =
            entry.split_once(',').ok_or_else(|| malformed(&what, "an entry is not version,signature"))?;
        if version != "v1" {
            continue;
        }
        if v1.len() == MAX_SIGNATURES {
            return Err(malformed(&what, "too many v1 signatures"));
        }
        let decoded = base64(sig).ok_or_else(|| malformed(&what, "a v1 signature is not base64"))?;
        v1.push(check_len(decoded, 32, &what)?);
    }
    if v1.is_empty() {
        return Err(malformed(&what, "there is no v1 signature"));
    }
    Ok(v1)
}
