//! An HMAC of the raw body in one header: GitHub (`X-Hub-Signature-256: sha256=<hex>`), Shopify
//! (`X-Shopify-Hmac-Sha256: <base64>`) and the configurable `scheme: hmac`.
//!
//! Shopify sends the same signature under a second, unprefixed name (`shopify-hmac-sha256`): its
//! events webhooks carry both names, newer deliveries may carry only the new one. Either is read;
//! when both are present they are the same HMAC of the same body with the same secret, so values
//! that differ mean one was altered on the way, and the request is refused as ambiguous rather
//! than checked against whichever one a rule would pick.

use super::parse::{base64, check_len, hex, malformed, optional_header, single_header};
use super::secret::{Secret, any_matches};
use super::{Algorithm, Encoding, HmacScheme, SignedRequest, VerifyError};
use ::hmac::Hmac;
use sha1::Sha1;
use sha2::Sha256;

pub(super) fn verify(scheme: &HmacScheme, secrets: &[Secret], req: &SignedRequest<'_>) -> Result<(), VerifyError> {
    let (name, value) = signature_header(scheme, req.headers)?;
    let what = format!("header {name}");
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

/// The name and value of the header that carries the signature: `header`, or its alias. Each may
/// be given once; both may be given only with the same value.
fn signature_header<'a>(
    scheme: &'a HmacScheme,
    headers: &'a http::HeaderMap,
) -> Result<(&'a str, &'a str), VerifyError> {
    let name = scheme.header.as_str();
    let Some(alias) = scheme.alias.as_ref().map(http::HeaderName::as_str) else {
        return Ok((name, single_header(headers, name)?));
    };
    match (optional_header(headers, name)?, optional_header(headers, alias)?) {
        (Some(value), Some(other)) if value != other => {
            Err(malformed(format!("headers {name} and {alias}"), "both are given, with different values"))
        }
        (Some(value), _) => Ok((name, value)),
        (None, Some(other)) => Ok((alias, other)),
        (None, None) => Err(VerifyError::MissingHeader(format!("{name} or {alias}"))),
    }
}
