//! An HMAC of the raw body in one header: GitHub (`X-Hub-Signature-256: sha256=<hex>`), Shopify
//! (`X-Shopify-Hmac-Sha256: <base64>`) and the configurable `scheme: hmac`.

use super::parse::{base64, check_len, hex, malformed, single_header};
use super::secret::{Secret, any_matches};
use super::{Algorithm, Encoding, HmacScheme, SignedRequest, VerifyError};
use ::hmac::Hmac;
use sha1::Sha1;
use sha2::Sha256;

pub(super) fn verify(scheme: &HmacScheme, secrets: &[Secret], req: &SignedRequest<'_>) -> Result<(), VerifyError> {
    let name = scheme.header.as_str();
    let what = format!("header {name}");
    let value = single_header(req.headers, name)?;
    let encoded = value
        .strip_prefix(scheme.prefix.as_str())
        .ok_or_else(|| malformed(&what, format!("it does not start with {:?}", scheme.prefix)))?;
    let decoded = match scheme.encoding {
        Encoding::Hex => hex(encoded).ok_or_else(|| malformed(&what, "the signature is not hex")),
        Encoding::Base64 => base64(encoded).ok_or_else(|| malformed(&what, "the signature is not base64")),
    }?;
    let signature = [check_len(decoded, scheme.algorithm.output_len(), &what)?];
    let parts: [&[u8]; 1] = [req.body];
    let matched = match scheme.algorithm {
        Algorithm::Sha256 => any_matches::<Hmac<Sha256>>(secrets, &parts, &signature),
        Algorithm::Sha1 => any_matches::<Hmac<Sha1>>(secrets, &parts, &signature),
    };
    if matched { Ok(()) } else { Err(VerifyError::NoMatch) }
}
