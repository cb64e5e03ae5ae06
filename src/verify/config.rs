//! The `verify:` block as written in YAML, and the rules that turn it into a scheme.
//!
//! A secret is a reference (`env:NAME`, `file:PATH`), never a value. Anything else is kept only as
//! the fact that it was inline: the text itself is dropped while parsing, so no error, `Debug`
//! output or `check` listing can show it.

use super::{DEFAULT_TOLERANCE_SECS, HmacScheme, Scheme};
use crate::config::Dur;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::path::PathBuf;

/// The `verify:` block of a route.
///
/// ```yaml
/// verify: { secret: env:STRIPE_WEBHOOK_SECRET, tolerance: 5m }         # scheme from the preset
/// verify: { secret: [env:NEW, env:OLD] }                                # rotation: both accepted
/// verify: { scheme: hmac, header: X-Signature, algorithm: sha256, encoding: hex,
///           prefix: "sha256=", secret: file:/run/secrets/hook }
/// verify: { scheme: twilio, secret: env:TWILIO_AUTH_TOKEN, public_url: https://example.com }
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Required without a preset; beside one, it replaces the preset's scheme.
    pub scheme: Option<SchemeName>,
    pub secret: SecretList,
    /// How far a signed timestamp may be from now (timestamped schemes only). Default 5m.
    pub tolerance: Option<Dur>,
    /// The signature header of an `hmac` scheme (GitHub and Shopify have theirs).
    pub header: Option<String>,
    pub algorithm: Option<Algorithm>,
    pub encoding: Option<Encoding>,
    pub prefix: Option<String>,
    /// Twilio only: `scheme://host[:port]` that Twilio called; default `https://` + the Host header.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SchemeName {
    Hmac,
    Github,
    Stripe,
    Shopify,
    Slack,
    StandardWebhooks,
    Svix,
    Twilio,
    Gitlab,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha1,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha1 => "sha1",
        }
    }

    /// The length of the MAC in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha1 => 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }
}

/// Where one secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    /// Written inline: refused by `compile`. The value was dropped while parsing.
    Inline,
}

impl SecretRef {
    fn parse(text: &str) -> SecretRef {
        if let Some(name) = text.strip_prefix("env:") {
            SecretRef::Env(name.to_string())
        } else if let Some(path) = text.strip_prefix("file:") {
            SecretRef::File(PathBuf::from(path))
        } else {
            SecretRef::Inline
        }
    }
}

/// One secret reference or a list of them (`secret: [env:NEW, env:OLD]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretList(pub Vec<SecretRef>);

const EXPECTING: &str = "env:NAME or file:PATH, or a list of them";

/// Refuses every kind of value but text and lists without quoting the value: serde's own
/// `invalid type` messages would print it, and it may be a secret written in the wrong place.
/// Every non-text visit method of a secret visitor: refused, without echoing the value.
macro_rules! refuse_without_echo {
    () => {
        refuse_without_echo!(
            visit_bool(bool),
            visit_i64(i64),
            visit_u64(u64),
            visit_i128(i128),
            visit_u128(u128),
            visit_f64(f64),
            visit_char(char),
            visit_bytes(&[u8])
        );
    };
    ($($method:ident($ty:ty)),*) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> {
            Err(E::custom(format_args!("expected {EXPECTING} (the value is not shown)")))
        })*
    };
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = SecretList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretList, E> {
        Ok(SecretList(vec![SecretRef::parse(v)]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SecretList, A::Error> {
        let mut list = Vec::new();
        while let Some(one) = seq.next_element::<OneSecret>()? {
            list.push(one.0);
        }
        Ok(SecretList(list))
    }

    refuse_without_echo!();
}

impl<'de> Deserialize<'de> for SecretList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

/// One element of a secret list: text only.
struct OneSecret(SecretRef);

impl<'de> Deserialize<'de> for OneSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = OneSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("env:NAME or file:PATH")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneSecret, E> {
                Ok(OneSecret(SecretRef::parse(v)))
            }
            refuse_without_echo!();
        }
        d.deserialize_any(One)
    }
}

/// The scheme: `scheme:` if given, else the preset's; then the `hmac` fields applied to it.
pub(super) fn resolve_scheme(cfg: &VerifyConfig, preset: Option<&Scheme>) -> Result<Scheme, String> {
    let scheme = match cfg.scheme {
        Some(SchemeName::Hmac) => {
            let header = cfg.header.as_deref().ok_or("verify.header: is required with scheme hmac")?;
            Scheme::Hmac(HmacScheme {
                header: header_name(header)?,
                algorithm: Algorithm::default(),
                encoding: Encoding::default(),
                prefix: String::new(),
                alias: None,
            })
        }
        Some(name) => Scheme::named(name).ok_or("verify.scheme: unknown")?,
        None => preset.cloned().ok_or(
            "verify.scheme: is required without a preset \
             (hmac, github, stripe, shopify, slack, standard-webhooks, svix, twilio or gitlab)",
        )?,
    };
    match scheme {
        Scheme::Hmac(mut h) => {
            if let Some(header) = &cfg.header {
                h.header = header_name(header)?;
                h.alias = None;
            }
            h.algorithm = cfg.algorithm.unwrap_or(h.algorithm);
            h.encoding = cfg.encoding.unwrap_or(h.encoding);
            if let Some(prefix) = &cfg.prefix {
                h.prefix = prefix.clone();
            }
            Ok(Scheme::Hmac(h))
        }
        other => {
            let hmac_only = [
                ("header", cfg.header.is_some()),
                ("algorithm", cfg.algorithm.is_some()),
                ("encoding", cfg.encoding.is_some()),
                ("prefix", cfg.prefix.is_some()),
            ];
            match hmac_only.iter().find(|(_, set)| *set) {
                Some((field, _)) => {
                    Err(format!("verify.{field}: only applies to the hmac schemes (hmac, github, shopify)"))
                }
                None => Ok(other),
            }
        }
    }
}

fn header_name(header: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(header.as_bytes())
        .map_err(|_| format!("verify.header: {header:?} is not a header name"))
}

/// The tolerance in seconds; only timestamped schemes take one.
pub(super) fn tolerance(cfg: &VerifyConfig, scheme: &Scheme) -> Result<u64, String> {
    match cfg.tolerance {
        None => Ok(DEFAULT_TOLERANCE_SECS),
        Some(_) if !scheme.timestamped() => Err("verify.tolerance: this scheme signs no timestamp".into()),
        Some(Dur(d)) if d.as_secs() == 0 => Err("verify.tolerance: must be at least 1s".into()),
        Some(Dur(d)) => Ok(d.as_secs()),
    }
}
