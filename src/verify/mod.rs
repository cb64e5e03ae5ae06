//! Signature verification: prove that a delivery comes from its provider before anything is claimed.
//!
//! A route's `verify:` block ([`VerifyConfig`]) names a scheme (or takes it from the route's
//! preset) and one or more secrets, each `env:NAME` or `file:PATH`; an inline secret is refused.
//! [`Verifier::compile`] loads the secrets once, at startup and in `check`, so a missing secret is
//! a config error and not a 401 on the first delivery. [`Verifier::verify`] checks one request:
//!
//! | scheme | header(s) | what is signed |
//! |---|---|---|
//! | `hmac` (and `github`) | one header, hex or base64, optional prefix | the raw body |
//! | `shopify` | `X-Shopify-Hmac-Sha256` or `shopify-hmac-sha256` (equal if both), base64 | the raw body |
//! | `stripe` | `Stripe-Signature: t=..,v1=..` | `{t}.{body}`, HMAC-SHA256 hex |
//! | `slack` | `X-Slack-Signature: v0=..`, `X-Slack-Request-Timestamp` | `v0:{ts}:{body}` |
//! | `standard-webhooks`, `svix` | `webhook-*` / `svix-*` id, timestamp, signature | `{id}.{ts}.{body}` |
//! | `twilio` | `X-Twilio-Signature` | URL + sorted form params, HMAC-SHA1 base64 |
//! | `gitlab` | `X-Gitlab-Token`, or GitLab's signing token (`webhook-*`) | the token itself / `{id}.{ts}.{body}` |
//!
//! Every check is constant-time (`Mac::verify_slice`, or digests of fixed length); every secret
//! is tried, so two can be active while one is rotated out; a signature header given twice is
//! refused as ambiguous, and so is a signature under two names with different values (Shopify's
//! `X-Shopify-Hmac-Sha256` and `shopify-hmac-sha256`); `whsec_` secrets are read with or without
//! their base64 padding; timestamps are digits only and must lie within `tolerance` (5 minutes
//! unless set) of the injected clock. Neither errors, `Debug` nor [`Verifier::describe`] ever
//! contain a secret or a computed signature.

mod config;
mod gitlab;
mod hmac;
mod parse;
mod secret;
mod slack;
mod standard;
mod stripe;
mod twilio;

pub use config::{Algorithm, Encoding, SchemeName, SecretList, SecretRef, VerifyConfig};

use http::HeaderName;
use secret::Secret;
use std::ffi::OsString;
use std::fmt;

/// How long a signed timestamp may differ from the clock when `tolerance:` is not set.
pub const DEFAULT_TOLERANCE_SECS: u64 = 5 * 60;

/// A signature scheme, compiled: which headers carry what, and how the signature is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// An HMAC of the raw body in one header: GitHub, Shopify and `scheme: hmac`.
    Hmac(HmacScheme),
    /// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=..]`: HMAC-SHA256 of `{t}.{body}`.
    Stripe,
    /// `X-Slack-Signature: v0=<hex>` over `v0:{X-Slack-Request-Timestamp}:{body}`.
    Slack,
    /// Standard Webhooks: `{id}.{timestamp}.{body}` signed with the `whsec_` key, `v1,<base64>` list.
    StandardWebhooks(StandardHeaders),
    /// `X-Twilio-Signature`: HMAC-SHA1 base64 of the public URL and the sorted POST parameters.
    Twilio,
    /// `X-Gitlab-Token` equal to the secret, or GitLab's signing token (Standard Webhooks headers).
    Gitlab,
}

/// An HMAC of the raw body carried in one header, e.g. `X-Hub-Signature-256: sha256=<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    pub header: HeaderName,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the encoded signature (`sha256=` for GitHub), empty for none.
    pub prefix: String,
    /// Another name the provider sends the same signature under (Shopify: `shopify-hmac-sha256`
    /// beside `X-Shopify-Hmac-Sha256`). Either may carry it; when both are present they must be
    /// equal, or the request is refused as ambiguous. Cleared when `header:` is configured.
    pub alias: Option<HeaderName>,
}

/// The three header names of the Standard Webhooks scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardHeaders {
    pub id: &'static str,
    pub timestamp: &'static str,
    pub signature: &'static str,
}

impl StandardHeaders {
    /// The names in the Standard Webhooks specification (also what GitLab's signing token uses).
    pub const WEBHOOK: StandardHeaders =
        StandardHeaders { id: "webhook-id", timestamp: "webhook-timestamp", signature: "webhook-signature" };
    /// Svix's names for the same scheme.
    pub const SVIX: StandardHeaders =
        StandardHeaders { id: "svix-id", timestamp: "svix-timestamp", signature: "svix-signature" };
}

impl Scheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    pub fn github() -> Scheme {
        Scheme::Hmac(HmacScheme {
            header: HeaderName::from_static("x-hub-signature-256"),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
            alias: None,
        })
    }

    /// `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>`, or the same value under the
    /// unprefixed `shopify-hmac-sha256` (events webhooks send both names, newer deliveries may send
    /// only that one).
    pub fn shopify() -> Scheme {
        Scheme::Hmac(HmacScheme {
            header: HeaderName::from_static("x-shopify-hmac-sha256"),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            prefix: String::new(),
            alias: Some(HeaderName::from_static("shopify-hmac-sha256")),
        })
    }

    /// The scheme a `scheme:` name stands for; `None` for `hmac`, which needs its header.
    pub fn named(name: SchemeName) -> Option<Scheme> {
        Some(match name {
            SchemeName::Hmac => return None,
            SchemeName::Github => Scheme::github(),
            SchemeName::Shopify => Scheme::shopify(),
            SchemeName::Stripe => Scheme::Stripe,
            SchemeName::Slack => Scheme::Slack,
            SchemeName::StandardWebhooks => Scheme::StandardWebhooks(StandardHeaders::WEBHOOK),
            SchemeName::Svix => Scheme::StandardWebhooks(StandardHeaders::SVIX),
            SchemeName::Twilio => Scheme::Twilio,
            SchemeName::Gitlab => Scheme::Gitlab,
        })
    }

    /// Whether the scheme signs a timestamp, so that `tolerance` means something.
    pub fn timestamped(&self) -> bool {
        matches!(self, Scheme::Stripe | Scheme::Slack | Scheme::StandardWebhooks(_) | Scheme::Gitlab)
    }

    fn describe(&self) -> String {
        match self {
            Scheme::Hmac(h) => {
                let prefix = if h.prefix.is_empty() { String::new() } else { format!(" after {:?}", h.prefix) };
                let alias = h.alias.as_ref().map(|a| format!(" (or {a})")).unwrap_or_default();
                format!("hmac-{} {} in {}{alias}{prefix}", h.algorithm.name(), h.encoding.name(), h.header)
            }
            Scheme::Stripe => "stripe (Stripe-Signature t=,v1=)".into(),
            Scheme::Slack => "slack (X-Slack-Signature v0=, X-Slack-Request-Timestamp)".into(),
            Scheme::StandardWebhooks(h) if *h == StandardHeaders::SVIX => {
                "svix (svix-id, svix-timestamp, svix-signature)".into()
            }
            Scheme::StandardWebhooks(h) => format!("standard-webhooks ({}, {}, {})", h.id, h.timestamp, h.signature),
            Scheme::Twilio => "twilio (X-Twilio-Signature)".into(),
            Scheme::Gitlab => "gitlab (X-Gitlab-Token, or webhook-signature)".into(),
        }
    }
}

/// What a request offers to verification. The clock is injected so that tests never sleep.
pub struct SignedRequest<'a> {
    pub method: &'a http::Method,
    /// As received (path and query); Twilio's URL is this behind `public_url` or the Host header.
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    /// Seconds since the Unix epoch.
    pub now_unix: i64,
}

/// Why a request was not accepted as coming from its provider. Each maps to a 401. The messages
/// name headers and conditions only: never a secret, a received or an expected signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no {0} header")]
    MissingHeader(String),
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("the timestamp in {header} is {skew} s away from now, outside the {tolerance} s tolerance")]
    Stale { header: String, skew: u64, tolerance: u64 },
    #[error("no signature matches a configured secret")]
    NoMatch,
}

impl VerifyError {
    /// A short stable name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::Malformed { .. } => "malformed",
            VerifyError::Stale { .. } => "stale",
            VerifyError::NoMatch => "no_match",
        }
    }
}

/// A compiled `verify:` block: the scheme and the loaded secrets.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    secrets: Vec<Secret>,
    tolerance: u64,
    public_url: Option<twilio::PublicUrl>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &self.secrets.len())
            .field("tolerance_secs", &self.tolerance)
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl Verifier {
    /// Resolves the scheme and loads the secrets now (environment variable or file), so that a
    /// missing secret fails `check` and startup. `preset_scheme` is the route's preset's scheme;
    /// `scheme:` beside a preset overrides it. Errors name the field and never hold a secret.
    pub fn compile(cfg: &VerifyConfig, preset_scheme: Option<&Scheme>) -> Result<Verifier, String> {
        Self::compile_with(cfg, preset_scheme, &|name| std::env::var_os(name))
    }

    /// [`Verifier::compile`] with the environment given as a lookup function.
    pub fn compile_with(
        cfg: &VerifyConfig,
        preset_scheme: Option<&Scheme>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Verifier, String> {
        let scheme = config::resolve_scheme(cfg, preset_scheme)?;
        let tolerance = config::tolerance(cfg, &scheme)?;
        let public_url = match (&cfg.public_url, &scheme) {
            (None, _) => None,
            (Some(url), Scheme::Twilio) => {
                Some(twilio::PublicUrl::parse(url).map_err(|e| format!("verify.public_url: {e}"))?)
            }
            (Some(_), _) => return Err("verify.public_url: only the twilio scheme signs a URL".into()),
        };
        let secrets = secret::load_all(&cfg.secret, &scheme, env)?;
        Ok(Verifier { scheme, secrets, tolerance, public_url })
    }

    /// Accepts the request if one of its signatures was made with one of the secrets.
    pub fn verify(&self, req: &SignedRequest<'_>) -> Result<(), VerifyError> {
        let secrets = self.secrets.as_slice();
        match &self.scheme {
            Scheme::Hmac(h) => hmac::verify(h, secrets, req),
            Scheme::Stripe => stripe::verify(secrets, self.tolerance, req),
            Scheme::Slack => slack::verify(secrets, self.tolerance, req),
            Scheme::StandardWebhooks(h) => standard::verify(h, secrets, self.tolerance, req),
            Scheme::Twilio => twilio::verify(secrets, self.public_url.as_ref(), req),
            Scheme::Gitlab => gitlab::verify(secrets, self.tolerance, req),
        }
    }

    /// For `idemgate check`: the scheme and how many secrets, never the secrets.
    pub fn describe(&self) -> String {
        let n = self.secrets.len();
        let mut out = format!("{}; {n} secret{}", self.scheme.describe(), if n == 1 { "" } else { "s" });
        if self.scheme.timestamped() {
            out.push_str(&format!(
                ", tolerance {}",
                humantime::format_duration(std::time::Duration::from_secs(self.tolerance))
            ));
        }
        if let Some(url) = &self.public_url {
            out.push_str(&format!(", public url {url}"));
        }
        out
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }
}

#[cfg(test)]
mod tests;
