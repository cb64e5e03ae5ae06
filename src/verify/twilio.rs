//! Twilio: `X-Twilio-Signature: base64(HMAC-SHA1(auth_token, url + sorted POST params))`.
//!
//! The URL is the one Twilio called, from the scheme to the end of the query string: the route's
//! `public_url` (or `https://` + the Host header) followed by the path and query as received.
//! For a form POST each parameter name and value is appended, sorted by name then value, without
//! separators; a GET signs the URL alone. A JSON body is not signed directly: the URL carries
//! `bodySHA256` (hex SHA-256 of the body), which must match. Twilio is not consistent about the
//! port in the signed URL, so, like its own libraries, the URL without a port and the URL with the
//! (default) port are both tried.
//!
//! Not covered: Webhook Rules that sign with a SharedKey and HMAC-SHA256
//! (`X-Twilio-Webhooks-Signature-Settings`); such requests fail with `NoMatch`.

use super::parse::{base64, check_len, malformed, single_header};
use super::secret::{Secret, any_matches, ct_eq};
use super::{SignedRequest, VerifyError};
use ::hmac::Hmac;
use http::uri::Authority;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fmt;

const SIGNATURE: &str = "X-Twilio-Signature";
const BODY_HASH: &str = "bodySHA256";

/// `public_url`: the scheme and authority Twilio calls, when the Host header is not it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PublicUrl {
    scheme: &'static str,
    authority: Authority,
}

impl PublicUrl {
    pub(super) fn parse(text: &str) -> Result<PublicUrl, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => return Err(format!("{text:?} must start with https:// or http://")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| format!("{text:?} has no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{text:?} must be scheme://host[:port] only; the request's path and query are added"));
        }
        Ok(PublicUrl { scheme, authority })
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

pub(super) fn verify(
    secrets: &[Secret],
    public: Option<&PublicUrl>,
    req: &SignedRequest<'_>,
) -> Result<(), VerifyError> {
    let what = format!("header {SIGNATURE}");
    let encoded = single_header(req.headers, SIGNATURE)?;
    let decoded = base64(encoded).ok_or_else(|| malformed(&what, "the signature is not base64"))?;
    let signature = [check_len(decoded, 20, &what)?];
    let urls = signed_urls(public, req)?;
    let body_hash = body_hash_param(req.uri.query().unwrap_or(""))?;
    let params = match body_hash {
        Some(_) => String::new(),
        None if req.method == http::Method::POST => sorted_params(req.body),
        None => String::new(),
    };
    let signed =
        urls.iter().any(|url| any_matches::<Hmac<Sha1>>(secrets, &[url.as_bytes(), params.as_bytes()], &signature));
    if !signed {
        return Err(VerifyError::NoMatch);
    }
    match body_hash {
        Some(given) if !ct_eq(hex_sha256(req.body).as_bytes(), given.to_ascii_lowercase().as_bytes()) => {
            Err(VerifyError::NoMatch)
        }
        _ => Ok(()),
    }
}

/// The URL without a port and with one (the given port, or the scheme's default).
fn signed_urls(public: Option<&PublicUrl>, req: &SignedRequest<'_>) -> Result<[String; 2], VerifyError> {
    let (scheme, authority) = match public {
        Some(p) => (p.scheme, p.authority.clone()),
        None => ("https", request_authority(req)?),
    };
    let path_and_query = req.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok([format!("{scheme}://{host}{path_and_query}"), format!("{scheme}://{host}:{port}{path_and_query}")])
}

/// The Host header, or the request's own authority (HTTP/2, absolute-form).
fn request_authority(req: &SignedRequest<'_>) -> Result<Authority, VerifyError> {
    match single_header(req.headers, "host") {
        Ok(host) => host.parse().map_err(|_| malformed("header host", "not a host[:port]")),
        Err(VerifyError::MissingHeader(_)) => {
            req.uri.authority().cloned().ok_or(VerifyError::MissingHeader("host".into()))
        }
        Err(e) => Err(e),
    }
}

/// The `bodySHA256` query parameter, if any; given twice it is ambiguous.
fn body_hash_param(query: &str) -> Result<Option<&str>, VerifyError> {
    let mut found = None;
    for pair in query.split('&') {
        let value = pair.strip_prefix(BODY_HASH).and_then(|rest| rest.strip_prefix('='));
        if let Some(value) = value
            && found.replace(value).is_some()
        {
            return Err(malformed("query parameter bodySHA256", "given more than once"));
        }
    }
    Ok(found)
}

/// `name1value1name2value2...`, sorted by name and then by value.
fn sorted_params(body: &[u8]) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    pairs.sort();
    pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()
}

fn hex_sha256(body: &[u8]) -> String {
    Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect()
}
