//! Stage `identify`: find the delivery's idempotency key (and scope) in the request.
//!
//! Sources: `header`, `json` (RFC 6901 pointer), `query`, `form` (urlencoded body field). A list
//! tries each in order; `all` joins several into one composite key. Every value is checked before
//! it is used: visible ASCII only, no longer than `max_key_length`, never ambiguous (a header or
//! member given twice is an error, not a guess).

use crate::config::{KeySource, KeySpec};
use crate::json::{self, JsonError, Tree};
use bytes::Bytes;
use http::HeaderMap;
use std::cell::OnceCell;

/// Why no usable key could be taken from a request. Each maps to a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no idempotency key: {0}")]
    Missing(String),
    #[error("{0} is given more than once")]
    Duplicate(String),
    #[error("the key from {0} is longer than {1} characters")]
    TooLong(String, usize),
    #[error("the key from {0} has characters other than visible ASCII")]
    NotVisible(String),
    #[error("the request body is not valid JSON ({0})")]
    BadJson(String),
    #[error("{0} is not a string or an integer")]
    BadJsonValue(String),
    #[error("the request body is not valid urlencoded form data")]
    BadForm,
}

/// What the request offers to key sources. The body is parsed at most once per format.
pub struct RequestView<'a> {
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    body: &'a Bytes,
    json: OnceCell<Result<Tree, JsonError>>,
}

impl<'a> RequestView<'a> {
    pub fn new(headers: &'a HeaderMap, query: Option<&'a str>, body: &'a Bytes) -> Self {
        RequestView { headers, query, body, json: OnceCell::new() }
    }

    pub fn body(&self) -> &Bytes {
        self.body
    }

    pub fn json(&self) -> Result<&Tree, KeyError> {
        self.json.get_or_init(|| json::parse(self.body)).as_ref().map_err(|e| KeyError::BadJson(e.to_string()))
    }
}

/// A compiled key specification.
#[derive(Debug, Clone)]
pub enum KeyExtractor {
    Header(http::HeaderName),
    Json(String),
    Query(String),
    Form(String),
    All(Vec<KeyExtractor>),
    FirstOf(Vec<KeyExtractor>),
}

impl KeyExtractor {
    pub fn compile(spec: &KeySpec) -> Result<KeyExtractor, String> {
        match spec {
            KeySpec::FirstOf(list) if list.is_empty() => Err("an empty list of sources".into()),
            KeySpec::FirstOf(list) => {
                list.iter().map(Self::compile).collect::<Result<_, _>>().map(KeyExtractor::FirstOf)
            }
            KeySpec::One(source) => Self::compile_source(source),
        }
    }

    fn compile_source(source: &KeySource) -> Result<KeyExtractor, String> {
        Ok(match source {
            KeySource::Header(name) => KeyExtractor::Header(
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("header: {name:?} is not a header name"))?,
            ),
            KeySource::Json(pointer) => {
                json::check_pointer(pointer).map_err(|e| format!("json: {e}"))?;
                KeyExtractor::Json(pointer.clone())
            }
            KeySource::Query(name) if name.is_empty() => {
                return Err("query: the parameter name is empty".into());
            }
            KeySource::Query(name) => KeyExtractor::Query(name.clone()),
            KeySource::Form(name) if name.is_empty() => {
                return Err("form: the field name is empty".into());
            }
            KeySource::Form(name) => KeyExtractor::Form(name.clone()),
            KeySource::All(parts) if parts.len() < 2 => {
                return Err("all: needs at least two sources".into());
            }
            KeySource::All(parts) => KeyExtractor::All(parts.iter().map(Self::compile).collect::<Result<_, _>>()?),
        })
    }

    /// Whether any source reads the body (then the body must be buffered before identification).
    pub fn reads_body(&self) -> bool {
        match self {
            KeyExtractor::Json(_) | KeyExtractor::Form(_) => true,
            KeyExtractor::Header(_) | KeyExtractor::Query(_) => false,
            KeyExtractor::All(v) | KeyExtractor::FirstOf(v) => v.iter().any(Self::reads_body),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeyExtractor::Header(h) => format!("header {h}"),
            KeyExtractor::Json(p) => format!("json {p}"),
            KeyExtractor::Query(q) => format!("query {q}"),
            KeyExtractor::Form(f) => format!("form {f}"),
            KeyExtractor::All(v) => format!("all({})", v.iter().map(Self::describe).collect::<Vec<_>>().join(" + ")),
            KeyExtractor::FirstOf(v) => {
                format!("first of({})", v.iter().map(Self::describe).collect::<Vec<_>>().join(" | "))
            }
        }
    }

    /// Extracts and validates the key. `Ok(None)` means no source yielded one.
    pub fn extract(&self, req: &RequestView<'_>, max_len: usize) -> Result<Option<String>, KeyError> {
        let Some((value, origin)) = self.raw(req, Use::Key)? else {
            return Ok(None);
        };
        validate(&value, origin, max_len)?;
        Ok(Some(value))
    }

    /// A scope value: hashed before it is stored, so anything a header can carry is fine
    /// (`Authorization: Bearer ...` has a space); only its length is bounded.
    pub fn extract_scope(&self, req: &RequestView<'_>, max_len: usize) -> Result<Option<String>, KeyError> {
        let Some((value, origin)) = self.raw(req, Use::Scope)? else { return Ok(None) };
        if value.len() > max_len {
            return Err(KeyError::TooLong(origin.describe(), max_len));
        }
        Ok(Some(value))
    }

    /// The raw value and the source it came from (described only in an error message).
    fn raw(&self, req: &RequestView<'_>, usage: Use) -> Result<Option<(String, &KeyExtractor)>, KeyError> {
        let found = match self {
            KeyExtractor::Header(name) => header_value(req.headers, name, usage)?,
            KeyExtractor::Json(pointer) => json_value(req.json()?, pointer)?,
            KeyExtractor::Query(name) => pair_value(req.query.unwrap_or(""), name, "query parameter")?,
            KeyExtractor::Form(name) => form_value(req.body, name)?,
            KeyExtractor::FirstOf(list) => {
                for source in list {
                    if let Some(found) = source.raw(req, usage)? {
                        return Ok(Some(found));
                    }
                }
                None
            }
            KeyExtractor::All(parts) => return Ok(composite(parts, req, usage)?.map(|key| (key, self))),
        };
        Ok(found.filter(|v| !v.is_empty()).map(|v| (v, self)))
    }
}

/// Joins the parts of an `all` key. Each part escapes `%` and `:` so that `a:b`+`c` and `a`+`b:c`
/// can never produce the same key.
fn composite(parts: &[KeyExtractor], req: &RequestView<'_>, usage: Use) -> Result<Option<String>, KeyError> {
    let mut key = String::new();
    for (i, part) in parts.iter().enumerate() {
        let Some((value, origin)) = part.raw(req, usage)? else {
            return Ok(None);
        };
        validate(&value, origin, usize::MAX)?;
        if i > 0 {
            key.push(':');
        }
        key.push_str(&value.replace('%', "%25").replace(':', "%3A"));
    }
    Ok(Some(key))
}

/// What a value is taken for: a key must be one unambiguous value; a scope (often a credential,
/// hashed before use) may be any header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Key,
    Scope,
}

fn header_value(headers: &HeaderMap, name: &http::HeaderName, usage: Use) -> Result<Option<String>, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Duplicate(format!("header {name}")));
    }
    let text = first.to_str().map_err(|_| KeyError::NotVisible(format!("header {name}")))?.trim();
    if let Some(unquoted) = unquote_sf_string(text) {
        return Ok(Some(unquoted));
    }
    // A comma outside an sf-string is what a proxy leaves when it merges two header lines into
    // one: two keys, as ambiguous as two lines.
    if usage == Use::Key && text.contains(',') {
        return Err(KeyError::Duplicate(format!("header {name}")));
    }
    Ok(Some(text.to_string()))
}

/// An RFC 8941 sf-string (`"abc"`, with `\"` and `\\` escapes) means the same key as its content.
fn unquote_sf_string(v: &str) -> Option<String> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('"' | '\\') => out.push(e),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn json_value(tree: &Tree, pointer: &str) -> Result<Option<String>, KeyError> {
    match tree.lookup(pointer) {
        Ok(Some(v)) => v.as_key().map(Some).ok_or_else(|| KeyError::BadJsonValue(format!("json {pointer}"))),
        Ok(None) => Ok(None),
        Err(JsonError::DuplicateMember(_)) => Err(KeyError::Duplicate(format!("json member {pointer}"))),
        Err(e) => Err(KeyError::BadJson(e.to_string())),
    }
}

fn form_value(body: &Bytes, name: &str) -> Result<Option<String>, KeyError> {
    let text = std::str::from_utf8(body).map_err(|_| KeyError::BadForm)?;
    pair_value(text, name, "form field")
}

/// Finds `name` in urlencoded pairs; given twice, it is ambiguous and refused.
fn pair_value(encoded: &str, name: &str, what: &str) -> Result<Option<String>, KeyError> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(encoded.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(KeyError::Duplicate(format!("{what} {name}")));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

fn validate(value: &str, origin: &KeyExtractor, max_len: usize) -> Result<(), KeyError> {
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::NotVisible(origin.describe()));
    }
    if value.len() > max_len {
        return Err(KeyError::TooLong(origin.describe(), max_len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn spec(yaml: &str) -> KeyExtractor {
        KeyExtractor::compile(&serde_saphyr::from_str::<KeySpec>(yaml).unwrap()).unwrap()
    }

    fn extract(
        spec_yaml: &str,
        headers: &[(&str, &str)],
        query: Option<&str>,
        body: &str,
    ) -> Result<Option<String>, KeyError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let body = Bytes::from(body.to_string());
        spec(spec_yaml).extract(&RequestView::new(&map, query, &body), 20)
    }

    #[test]
    fn sources_table() {
        let long = "x".repeat(21);
        let long_header = [("k", long.as_str())];
        let ok = |v: &str| Ok(Some(v.to_string()));
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, &'a str, Result<Option<String>, KeyError>);
        let cases: Vec<Case> = vec![
            ("{header: Idempotency-Key}", &[("idempotency-key", "abc")], None, "", ok("abc")),
            ("{header: Idempotency-Key}", &[("idempotency-key", "\"abc\"")], None, "", ok("abc")),
            ("{header: Idempotency-Key}", &[("idempotency-key", "\"a\\\"b\"")], None, "", ok("a\"b")),
            ("{header: Idempotency-Key}", &[], None, "", Ok(None)),
            (
                "{header: Idempotency-Key}",
                &[("idempotency-key", "k1,k2")],
                None,
                "",
                Err(KeyError::Duplicate("header idempotency-key".into())),
            ),
            (
                "{header: Idempotency-Key}",
                &[("idempotency-key", "\"k1\", \"k2\"")],
                None,
                "",
                Err(KeyError::Duplicate("header idempotency-key".into())),
            ),
            ("{header: Idempotency-Key}", &[("idempotency-key", "\"k1,k2\"")], None, "", ok("k1,k2")),
            ("{header: Idempotency-Key}", &[("idempotency-key", "")], None, "", Ok(None)),
            (
                "{header: Idempotency-Key}",
                &[("idempotency-key", "a"), ("idempotency-key", "b")],
                None,
                "",
                Err(KeyError::Duplicate("header idempotency-key".into())),
            ),
            ("{header: K}", &[("k", "a b")], None, "", Err(KeyError::NotVisible("header k".into()))),
            ("{header: K}", &long_header, None, "", Err(KeyError::TooLong("header k".into(), 20))),
            ("{json: /id}", &[], None, r#"{"id":"evt_1"}"#, ok("evt_1")),
            ("{json: /id}", &[], None, r#"{"id":42}"#, ok("42")),
            ("{json: /id}", &[], None, r#"{"id":-7}"#, ok("-7")),
            ("{json: /id}", &[], None, r#"{"id":1.5}"#, Err(KeyError::BadJsonValue("json /id".into()))),
            ("{json: /id}", &[], None, r#"{"id":true}"#, Err(KeyError::BadJsonValue("json /id".into()))),
            ("{json: /id}", &[], None, r#"{"id":"a","id":"b"}"#, Err(KeyError::Duplicate("json member /id".into()))),
            ("{json: /data/object/id}", &[], None, r#"{"data":{"object":{"id":"x"}}}"#, ok("x")),
            ("{json: /a~1b}", &[], None, r#"{"a/b":"y"}"#, ok("y")),
            ("{json: /list/1}", &[], None, r#"{"list":["a","b"]}"#, ok("b")),
            ("{json: /id}", &[], None, r#"{"other":1}"#, Ok(None)),
            ("{query: idempotency_key}", &[], Some("a=1&idempotency_key=q1"), "", ok("q1")),
            ("{query: k}", &[], Some("k=1&k=2"), "", Err(KeyError::Duplicate("query parameter k".into()))),
            ("{form: MessageSid}", &[], None, "MessageSid=SM1&MessageStatus=sent", ok("SM1")),
            (
                "{all: [{form: MessageSid}, {form: MessageStatus}]}",
                &[],
                None,
                "MessageSid=SM1&MessageStatus=sent",
                ok("SM1:sent"),
            ),
            ("{all: [{form: A}, {form: B}]}", &[], None, "A=x%3Ay&B=z", ok("x%3Ay:z")),
            ("{all: [{form: A}, {form: B}]}", &[], None, "A=x", Ok(None)),
            ("[{header: Idempotency-Key}, {query: k}]", &[], Some("k=fallback"), "", ok("fallback")),
            ("[{header: Idempotency-Key}, {query: k}]", &[("idempotency-key", "h")], Some("k=fallback"), "", ok("h")),
        ];
        for (s, headers, query, body, want) in cases {
            assert_eq!(extract(s, headers, query, body), want, "{s} {headers:?} {query:?} {body}");
        }
    }

    #[test]
    fn json_source_on_non_json_body_is_an_error() {
        assert!(matches!(extract("{json: /id}", &[], None, "not json"), Err(KeyError::BadJson(_))));
    }

    #[test]
    fn composite_parts_cannot_collide() {
        let a = extract("{all: [{form: A}, {form: B}]}", &[], None, "A=a%3Ab&B=c").unwrap();
        let b = extract("{all: [{form: A}, {form: B}]}", &[], None, "A=a&B=b%3Ac").unwrap();
        assert_ne!(a, b);
    }
}
