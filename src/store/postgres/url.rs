//! The TLS parameters of `store.postgres.url`, read as libpq names them: `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey`. tokio-postgres knows only `sslmode` `disable`, `prefer`
//! and `require`, and none of the files, so [`split`] takes all four out of the connection string
//! (URL or `key=value` form) and hands the rest to tokio-postgres unchanged.
//!
//! Unlike libpq, `require` verifies the server as `verify-full` does: a TLS connection that is
//! required but not verified protects nothing against whoever can intercept it.

use crate::store::tls::{ClientIdentity, Roots, Verify};
use std::fmt;
use std::path::PathBuf;

/// libpq's `sslmode`, with `require` made as strict as `verify-full`. `allow` is not offered:
/// it would prefer plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, UrlError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(UrlError::Mode(other.to_string())),
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// How much of the server's certificate is checked; `None` without TLS.
    pub fn verify(self) -> Option<Verify> {
        match self {
            SslMode::Disable => None,
            SslMode::Prefer => Some(Verify::Nothing),
            SslMode::Require | SslMode::VerifyFull => Some(Verify::Full),
            SslMode::VerifyCa => Some(Verify::ChainOnly),
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to give up without it.
    pub fn wire(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Wire;
        match self {
            SslMode::Disable => Wire::Disable,
            SslMode::Prefer => Wire::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Wire::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the TLS parameters of the url cannot be used. Never quotes the url (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("{0} is given twice")]
    Twice(&'static str),
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("sslcert and sslkey go together: {0} is missing")]
    HalfIdentity(&'static str),
    #[error("{0} is set, but sslmode=disable never uses TLS")]
    UnusedWithoutTls(&'static str),
    #[error("sslrootcert is set, but sslmode=prefer (the default) does not verify the server: set sslmode=verify-full")]
    RootCertWithPrefer,
    #[error("{0} is not valid percent-encoded UTF-8")]
    Encoding(&'static str),
    #[error("a quoted value is not terminated")]
    Unterminated,
}

/// The TLS settings of one url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTls {
    pub mode: SslMode,
    /// `sslrootcert`; `None` (or `sslrootcert=system`) means the system's roots.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl PostgresTls {
    /// The settings of a url (for `check` and config validation), the url itself not kept.
    pub fn of_url(url: &str) -> Result<PostgresTls, UrlError> {
        split(url).map(|(_, settings)| settings)
    }

    pub fn roots(&self) -> Roots {
        match &self.root_cert {
            Some(path) => Roots::File { field: "sslrootcert", path: path.clone() },
            None => Roots::System,
        }
    }

    pub fn identity(&self) -> Option<ClientIdentity> {
        self.client
            .as_ref()
            .map(|(cert, key)| ClientIdentity { cert: ("sslcert", cert.clone()), key: ("sslkey", key.clone()) })
    }

    /// For `idemgate check` and messages: `tls: verify-full, ca: /etc/ca.pem, client cert: ...`.
    pub fn describe(&self) -> String {
        let mut text = format!("tls: {}", self.mode);
        match self.mode {
            SslMode::Disable => text = "tls: off (sslmode=disable)".into(),
            SslMode::Prefer => text.push_str(", server not verified, plain text if the server has no TLS"),
            _ => match &self.root_cert {
                Some(path) => text.push_str(&format!(", ca: {}", path.display())),
                None => text.push_str(", system roots"),
            },
        }
        if let Some((cert, _)) = &self.client {
            text.push_str(&format!(", client cert: {}", cert.display()));
        }
        text
    }
}

const PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The connection string without the TLS parameters, and those parameters (name, decoded value).
type Split = (String, Vec<(&'static str, String)>);

/// The connection string without the TLS parameters, and the settings they make. Without
/// `sslmode` the mode is `prefer`, libpq's default.
pub fn split(url: &str) -> Result<(String, PostgresTls), UrlError> {
    let (rest, found) = match query_start(url) {
        Some(start) => split_query(url, start)?,
        None if is_url(url) => (url.to_string(), Vec::new()),
        None => split_keywords(url)?,
    };
    Ok((rest, settings(found)?))
}

fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Where a URL's query begins: the first `?` after the credentials (tokio-postgres reads the
/// credentials up to the first `@`, so a password may hold a raw `?`).
fn query_start(url: &str) -> Option<usize> {
    if !is_url(url) {
        return None;
    }
    let after_scheme = url.find("://")? + 3;
    let after_credentials = url[after_scheme..].find('@').map_or(after_scheme, |at| after_scheme + at + 1);
    url[after_credentials..].find('?').map(|q| after_credentials + q)
}

fn split_query(url: &str, start: usize) -> Result<Split, UrlError> {
    let mut kept = Vec::new();
    let mut found = Vec::new();
    for pair in url[start + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match ours(&decode(key, "a parameter name")?) {
            Some(name) => found.push((name, decode(value, name)?)),
            None => kept.push(pair),
        }
    }
    let mut rest = url[..start].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, found))
}

fn decode(text: &str, what: &'static str) -> Result<String, UrlError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UrlError::Encoding(what))
}

fn ours(key: &str) -> Option<&'static str> {
    PARAMS.into_iter().find(|p| *p == key)
}

/// The `key=value` form (`host=db user=idemgate sslmode=verify-full`), values plain or
/// single-quoted, `\` escaping the next character, as libpq and tokio-postgres read them.
fn split_keywords(text: &str) -> Result<Split, UrlError> {
    let mut rest = String::new();
    let mut found = Vec::new();
    let mut tokens = Keywords { text, at: 0 };
    while let Some(pair) = tokens.next_pair()? {
        match ours(pair.key) {
            Some(name) => found.push((name, pair.value)),
            None => {
                rest.push_str(&text[pair.span]);
                rest.push(' ');
            }
        }
    }
    Ok((rest.trim_end().to_string(), found))
}

/// One `key = value`, its value unescaped, and where the whole of it stands in the text.
struct Pair<'a> {
    key: &'a str,
    value: String,
    span: std::ops::Range<usize>,
}

/// A cursor over `key = value` pairs.
struct Keywords<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Keywords<'a> {
    /// The next pair. Malformed text is left for tokio-postgres to refuse (it is kept in the
    /// pair's span).
    fn next_pair(&mut self) -> Result<Option<Pair<'a>>, UrlError> {
        self.skip_whitespace();
        let start = self.at;
        let key_len = self.rest().find(|c: char| c.is_whitespace() || c == '=').unwrap_or(self.rest().len());
        if key_len == 0 && self.rest().is_empty() {
            return Ok(None);
        }
        let key = &self.text[start..start + key_len];
        self.at += key_len;
        self.skip_whitespace();
        if !self.rest().starts_with('=') {
            // Not a pair: keep the rest whole, for tokio-postgres to report.
            self.at = self.text.len();
            return Ok(Some(Pair { key, value: String::new(), span: start..self.at }));
        }
        self.at += 1;
        self.skip_whitespace();
        let value = self.value()?;
        Ok(Some(Pair { key, value, span: start..self.at }))
    }

    fn value(&mut self) -> Result<String, UrlError> {
        let quoted = self.rest().starts_with('\'');
        if quoted {
            self.at += 1;
        }
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' if quoted => {
                    self.at += i + 1;
                    return Ok(value);
                }
                c if c.is_whitespace() && !quoted => {
                    self.at += i;
                    return Ok(value);
                }
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                c => value.push(c),
            }
        }
        if quoted {
            return Err(UrlError::Unterminated);
        }
        self.at = self.text.len();
        Ok(value)
    }

    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_whitespace(&mut self) {
        self.at += self.rest().len() - self.rest().trim_start().len();
    }
}

/// The settings the parameters make, and the combinations that would silently do nothing.
fn settings(found: Vec<(&'static str, String)>) -> Result<PostgresTls, UrlError> {
    let mut values: [Option<String>; 4] = Default::default();
    for (name, value) in found {
        let slot = &mut values[PARAMS.iter().position(|p| *p == name).expect("one of PARAMS")];
        if slot.is_some() {
            return Err(UrlError::Twice(name));
        }
        if value.is_empty() {
            return Err(UrlError::Empty(name));
        }
        *slot = Some(value);
    }
    let [mode, root_cert, cert, key] = values;
    let mode = mode.as_deref().map(SslMode::parse).transpose()?.unwrap_or(SslMode::Prefer);
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (Some(_), None) => return Err(UrlError::HalfIdentity("sslkey")),
        (None, Some(_)) => return Err(UrlError::HalfIdentity("sslcert")),
        (None, None) => None,
    };
    // libpq 16's `sslrootcert=system`: the system's roots, as when it is absent.
    let root_cert = root_cert.filter(|r| r != "system").map(PathBuf::from);
    check_combination(mode, root_cert.is_some(), client.is_some())?;
    Ok(PostgresTls { mode, root_cert, client })
}

fn check_combination(mode: SslMode, root_cert: bool, client: bool) -> Result<(), UrlError> {
    match mode {
        SslMode::Disable if root_cert => Err(UrlError::UnusedWithoutTls("sslrootcert")),
        SslMode::Disable if client => Err(UrlError::UnusedWithoutTls("sslcert")),
        SslMode::Prefer if root_cert => Err(UrlError::RootCertWithPrefer),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: SslMode, root: Option<&str>, client: Option<(&str, &str)>) -> PostgresTls {
        PostgresTls {
            mode,
            root_cert: root.map(PathBuf::from),
            client: client.map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
        }
    }

    #[test]
    fn urls_lose_their_tls_parameters_and_keep_the_rest() {
        let cases: &[(&str, &str, PostgresTls)] = &[
            ("postgres://u@db/x", "postgres://u@db/x", tls(SslMode::Prefer, None, None)),
            ("postgres://u@db/x?sslmode=disable", "postgres://u@db/x", tls(SslMode::Disable, None, None)),
            (
                "postgresql://u:p%3Fw@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fca%20dir%2Fca.pem&connect_timeout=3",
                "postgresql://u:p%3Fw@db:5432/x?application_name=a&connect_timeout=3",
                tls(SslMode::VerifyFull, Some("/ca dir/ca.pem"), None),
            ),
            // A raw `?` in the password is the password's, not the query's.
            ("postgres://u:a?b@db/x?sslmode=require", "postgres://u:a?b@db/x", tls(SslMode::Require, None, None)),
            (
                "postgres://db/x?sslmode=verify-ca&sslcert=/c.pem&sslkey=/k.pem&sslrootcert=system",
                "postgres://db/x",
                tls(SslMode::VerifyCa, None, Some(("/c.pem", "/k.pem"))),
            ),
            (
                "postgres://db/x?sslmode=prefer&sslcert=c&sslkey=k",
                "postgres://db/x",
                tls(SslMode::Prefer, None, Some(("c", "k"))),
            ),
        ];
        for (url, rest, want) in cases {
            assert_eq!(split(url), Ok((rest.to_string(), want.clone())), "{url}");
        }
    }

    #[test]
    fn keyword_strings_lose_their_tls_parameters_and_keep_the_rest() {
        let cases: &[(&str, &str, PostgresTls)] = &[
            ("host=db user=u", "host=db user=u", tls(SslMode::Prefer, None, None)),
            (
                "host=db sslmode = verify-full sslrootcert='/my ca/ca.pem' password='a b\\'c'",
                "host=db password='a b\\'c'",
                tls(SslMode::VerifyFull, Some("/my ca/ca.pem"), None),
            ),
            ("sslmode=require\thost=db", "host=db", tls(SslMode::Require, None, None)),
        ];
        for (text, rest, want) in cases {
            assert_eq!(split(text), Ok((rest.to_string(), want.clone())), "{text}");
        }
    }

    #[test]
    fn useless_or_unknown_settings_are_refused_without_quoting_the_url() {
        let cases: &[(&str, UrlError)] = &[
            ("postgres://u:hunter2@db/x?sslmode=allow", UrlError::Mode("allow".into())),
            ("postgres://u:hunter2@db/x?sslmode=verify-full&sslmode=disable", UrlError::Twice("sslmode")),
            ("postgres://u:hunter2@db/x?sslmode=require&sslcert=/c", UrlError::HalfIdentity("sslkey")),
            ("postgres://u:hunter2@db/x?sslkey=/k&sslmode=require", UrlError::HalfIdentity("sslcert")),
            ("postgres://u:hunter2@db/x?sslrootcert=/ca", UrlError::RootCertWithPrefer),
            ("postgres://u:hunter2@db/x?sslmode=disable&sslrootcert=/ca", UrlError::UnusedWithoutTls("sslrootcert")),
            ("postgres://u:hunter2@db/x?sslmode=", UrlError::Empty("sslmode")),
            ("postgres://u:hunter2@db/x?sslrootcert=%ff&sslmode=require", UrlError::Encoding("sslrootcert")),
            ("host=db password=hunter2 sslrootcert='/ca", UrlError::Unterminated),
        ];
        for (url, want) in cases {
            let got = split(url).unwrap_err();
            assert_eq!(&got, want, "{url}");
            assert!(!got.to_string().contains("hunter2"), "{got}");
        }
    }

    #[test]
    fn modes_verify_as_documented() {
        let table = [
            (SslMode::Disable, None, tokio_postgres::config::SslMode::Disable),
            (SslMode::Prefer, Some(Verify::Nothing), tokio_postgres::config::SslMode::Prefer),
            (SslMode::Require, Some(Verify::Full), tokio_postgres::config::SslMode::Require),
            (SslMode::VerifyCa, Some(Verify::ChainOnly), tokio_postgres::config::SslMode::Require),
            (SslMode::VerifyFull, Some(Verify::Full), tokio_postgres::config::SslMode::Require),
        ];
        for (mode, verify, wire) in table {
            assert_eq!((mode.verify(), mode.wire()), (verify, wire), "{mode}");
        }
    }

    #[test]
    fn check_shows_mode_roots_and_client_cert() {
        let cases = [
            (tls(SslMode::VerifyFull, Some("/ca.pem"), None), "tls: verify-full, ca: /ca.pem"),
            (tls(SslMode::Require, None, Some(("/c", "/k"))), "tls: require, system roots, client cert: /c"),
            (tls(SslMode::Disable, None, None), "tls: off (sslmode=disable)"),
        ];
        for (settings, want) in cases {
            assert_eq!(settings.describe(), want);
        }
    }
}
