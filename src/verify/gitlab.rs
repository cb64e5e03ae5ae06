//! GitLab: the secret token sent as is in `X-Gitlab-Token`, or the newer signing token.
//!
//! A webhook with a signing token carries Standard Webhooks headers (`webhook-id`, equal to
//! `Idempotency-Key`, `webhook-timestamp`, `webhook-signature: v1,<base64>`) and is checked as
//! such. GitLab only accepts a signing token written `whsec_<base64>` (it generates `whsec_` +
//! base64 of 32 random bytes) and keys the HMAC with the decoded bytes (its merge request checks
//! deliveries with the standardwebhooks library). So a secret starting with `whsec_` is decoded,
//! with or without its `=` padding, and one that does not decode is a config error (it used to
//! become a raw-byte key silently, and every signed delivery then failed). Any other secret is a
//! secret token, used as its bytes. A request passes if one mechanism it carries verifies against
//! one configured secret; the token is compared in constant time. The token carries no
//! timestamp, so only the signing token protects against replays.

use super::parse::single_header;
use super::secret::{Secret, same_secret};
use super::{SignedRequest, StandardHeaders, VerifyError, standard};

const TOKEN: &str = "X-Gitlab-Token";

pub(super) fn verify(secrets: &[Secret], tolerance: u64, req: &SignedRequest<'_>) -> Result<(), VerifyError> {
    let names = StandardHeaders::WEBHOOK;
    let signed = req.headers.contains_key(names.signature).then(|| standard::verify(&names, secrets, tolerance, req));
    if let Some(Ok(())) = signed {
        return Ok(());
    }
    match (single_header(req.headers, TOKEN), signed) {
        (Ok(token), signed) => {
            if secrets.iter().any(|s| same_secret(token.as_bytes(), &s.raw)) {
                Ok(())
            } else {
                Err(signed.and_then(Result::err).unwrap_or(VerifyError::NoMatch))
            }
        }
        (Err(VerifyError::MissingHeader(_)), Some(Err(e))) => Err(e),
        (Err(e), _) => Err(e),
    }
}
