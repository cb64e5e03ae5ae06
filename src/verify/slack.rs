//! Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{timestamp}:{body}")>` with the
//! timestamp in `X-Slack-Request-Timestamp`, which must be within the tolerance (five minutes in
//! Slack's guide).

use super::parse::{check_age, check_len, hex, malformed, single_header, timestamp};
use super::secret::{Secret, any_matches};
use super::{SignedRequest, VerifyError};
use ::hmac::Hmac;
use sha2::Sha256;

const SIGNATURE: &str = "X-Slack-Signature";
const TIMESTAMP: &str = "X-Slack-Request-Timestamp";

pub(super) fn verify(secrets: &[Secret], tolerance: u64, req: &SignedRequest<'_>) -> Result<(), VerifyError> {
    let what = format!("header {SIGNATURE}");
    let signature = single_header(req.headers, SIGNATURE)?;
    let ts_text = single_header(req.headers, TIMESTAMP)?;
    let ts = timestamp(ts_text, &format!("header {TIMESTAMP}"))?;
    let hex_sig = signature.strip_prefix("v0=").ok_or_else(|| malformed(&what, "it does not start with \"v0=\""))?;
    let decoded = hex(hex_sig).ok_or_else(|| malformed(&what, "the signature is not hex"))?;
    let candidates = [check_len(decoded, 32, &what)?];
    if !any_matches::<Hmac<Sha256>>(secrets, &[b"v0:", ts_text.as_bytes(), b":", req.body], &candidates) {
        return Err(VerifyError::NoMatch);
    }
    check_age(ts, req.now_unix, tolerance, TIMESTAMP)
}
