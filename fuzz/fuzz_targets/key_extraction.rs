//! Fuzz target: key extraction (`idemgate::key`), the JSON tree (`idemgate::json`) and the JSON
//! fingerprint (`idemgate::fingerprint`), on one request built from the input.
//!
//! The input is plain text, so that seeds can be written by hand (see README.md):
//!
//! ```text
//! <spec>            line 1: the key spec, in the small language of `parse_spec` below
//! <max_len>         line 2: max_key_length, decimal (anything else: 64)
//! <name>: <value>   header lines, until an empty line; repeated names are appended, values
//! ...               may hold any byte that `HeaderValue` accepts (obs-text 0x80-0xFF included)
//!                   (the empty line)
//! ?<query>          the query string; a line not starting with '?' means "no query"
//! <body...>         everything after, byte for byte
//! ```
//!
//! Checked, for every input:
//! - no panic from `KeyExtractor::compile`, `extract`, `json::parse`, `Tree::canonical`,
//!   `Fingerprinter::compute`;
//! - an `Ok(Some(key))` is non-empty, visible ASCII only and at most `max_len` bytes long;
//! - extraction is deterministic (a fresh `RequestView`, and the same one with its cached JSON
//!   tree, give the same result) and a one-element first-of list means the same as its element;
//! - a body that parses is nested at most 128 deep, and the body wrapped in 129 arrays is an
//!   error, not a crash;
//! - the canonical JSON of a parsed body parses again to the same canonical JSON, and the
//!   fingerprint of the canonical body equals that of the body (same payload, same digest).
//!
//! The float reproducer (now in the corpus) broke the last check until serde_json's exact float
//! parsing was switched on.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use idemgate::config::{FingerprintSpec, KeySource, KeySpec};
use idemgate::fingerprint::Fingerprinter;
use idemgate::json::{self, Tree};
use idemgate::key::{KeyExtractor, RequestView};
use libfuzzer_sys::fuzz_target;

/// serde_json's recursion limit, which `json::parse` relies on for deep bodies.
const MAX_DEPTH: usize = 128;

const HEADERS: &[&str] = &["Idempotency-Key", "X-GitHub-Delivery", "X-Id", "bad name", ""];
const POINTERS: &[&str] = &["/id", "/data/object/id", "/list/1", "/a~1b", "", "/id/0", "id", "/a~2"];
const QUERY: &[&str] = &["idempotency_key", "k", "", "a b", "\u{e9}"];
const FORM: &[&str] = &["MessageSid", "MessageStatus", "", "k", "a:b"];

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    check_key(&input);
    check_json(&input);
});

struct Input {
    spec: KeySpec,
    max_len: usize,
    headers: HeaderMap,
    query: Option<String>,
    body: Bytes,
}

impl Input {
    fn parse(data: &[u8]) -> Input {
        let mut rest = data;
        let spec_line = next_line(&mut rest);
        let max_len = std::str::from_utf8(next_line(&mut rest)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(64);
        let mut headers = HeaderMap::new();
        loop {
            let line = next_line(&mut rest);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
                headers.append(name, value);
            }
        }
        let query = next_line(&mut rest).strip_prefix(b"?").map(|q| String::from_utf8_lossy(q).into_owned());
        let mut spec_bytes = spec_line;
        let mut items = parse_list(&mut spec_bytes, 0, None);
        let spec = match items.len() {
            0 => KeySpec::One(KeySource::Header(HEADERS[0].into())),
            1 => items.pop().unwrap(),
            _ => KeySpec::FirstOf(items),
        };
        Input { spec, max_len, headers, query, body: Bytes::copy_from_slice(rest) }
    }
}

/// Takes one line (without its "\n" or "\r\n") off the front of `rest`.
fn next_line<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (*rest, &rest[rest.len()..]),
    };
    *rest = tail;
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The spec language: `h<d>` header, `j<d>` json pointer, `q<d>` query, `f<d>` form (each `<d>`
/// a digit choosing a name from the tables above, 0 if absent), `a(...)` all, `[...]` first of.
/// Any other byte is skipped. Nesting is cut at depth 4.
fn parse_list(s: &mut &[u8], depth: usize, close: Option<u8>) -> Vec<KeySpec> {
    let mut items = Vec::new();
    while let Some((&c, tail)) = s.split_first() {
        *s = tail;
        if Some(c) == close {
            break;
        }
        let item = match c {
            b'h' => KeySpec::One(KeySource::Header(pick(s, HEADERS))),
            b'j' => KeySpec::One(KeySource::Json(pick(s, POINTERS))),
            b'q' => KeySpec::One(KeySource::Query(pick(s, QUERY))),
            b'f' => KeySpec::One(KeySource::Form(pick(s, FORM))),
            b'a' if s.first() == Some(&b'(') && depth < 4 => {
                *s = &s[1..];
                KeySpec::One(KeySource::All(parse_list(s, depth + 1, Some(b')'))))
            }
            b'[' if depth < 4 => KeySpec::FirstOf(parse_list(s, depth + 1, Some(b']'))),
            _ => continue,
        };
        items.push(item);
    }
    items
}

fn pick(s: &mut &[u8], table: &[&str]) -> String {
    match s.first() {
        Some(d @ b'0'..=b'9') => {
            *s = &s[1..];
            table[(d - b'0') as usize % table.len()].to_string()
        }
        _ => table[0].to_string(),
    }
}

fn check_key(input: &Input) {
    let Ok(extractor) = KeyExtractor::compile(&input.spec) else {
        return;
    };
    let view = RequestView::new(&input.headers, input.query.as_deref(), &input.body);
    let got = extractor.extract(&view, input.max_len);
    if let Ok(Some(key)) = &got {
        assert!(!key.is_empty(), "{:?}: empty key", input.spec);
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{:?}: key {key:?} is not visible ASCII", input.spec);
        assert!(key.len() <= input.max_len, "{:?}: key {key:?} longer than {}", input.spec, input.max_len);
    }
    // The same view again (its JSON tree now cached), and a fresh one: the same answer.
    assert_eq!(extractor.extract(&view, input.max_len), got, "{:?}: second extract differs", input.spec);
    let fresh = RequestView::new(&input.headers, input.query.as_deref(), &input.body);
    assert_eq!(extractor.extract(&fresh, input.max_len), got, "{:?}: fresh view differs", input.spec);
    // [spec] means spec.
    let single = KeyExtractor::compile(&KeySpec::FirstOf(vec![input.spec.clone()])).expect("[spec] compiles");
    let fresh = RequestView::new(&input.headers, input.query.as_deref(), &input.body);
    assert_eq!(single.extract(&fresh, input.max_len), got, "{:?}: [spec] differs from spec", input.spec);
}

fn check_json(input: &Input) {
    let body = &input.body;
    let fingerprinters = [
        Fingerprinter::compile(&FingerprintSpec::Json(vec!["/a".into()])).expect("json [/a] compiles"),
        Fingerprinter::compile(&FingerprintSpec::Json(vec!["".into(), "/id".into()])).expect("json ['', /id] compiles"),
    ];
    let headers = HeaderMap::new();
    let view = RequestView::new(&headers, None, body);
    let prints: Vec<_> = fingerprinters.iter().map(|f| f.compute(&view)).collect();

    let mut deep = Vec::with_capacity(body.len() + 2 * (MAX_DEPTH + 1));
    deep.resize(MAX_DEPTH + 1, b'[');
    deep.extend_from_slice(body);
    deep.resize(deep.len() + MAX_DEPTH + 1, b']');
    assert!(json::parse(&deep).is_err(), "the body inside {} arrays parsed", MAX_DEPTH + 1);

    let Ok(tree) = json::parse(body) else {
        return;
    };
    assert!(depth(&tree) <= MAX_DEPTH, "a body nested {} deep parsed", depth(&tree));
    let mut canonical = Vec::new();
    tree.canonical(&mut canonical);
    let reparsed = json::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical {:?} does not parse: {e}", String::from_utf8_lossy(&canonical)));
    let mut again = Vec::new();
    reparsed.canonical(&mut again);
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&canonical),
        "canonical JSON is not a fixed point"
    );
    let canonical = Bytes::from(canonical);
    let view = RequestView::new(&headers, None, &canonical);
    for (f, print) in fingerprinters.iter().zip(&prints) {
        assert_eq!(&f.compute(&view), print, "{f:?}: the canonical body digests differently");
    }
}

fn depth(t: &Tree) -> usize {
    match t {
        Tree::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Tree::Object(members) => 1 + members.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
        _ => 0,
    }
}
