//! The request path as routes see it, and only for matching: the request is forwarded as it arrived.
//!
//! Apps route one URL to a handler in many spellings: `%67ithub` for `github`, `//`, dot segments,
//! a trailing slash, Tomcat's and Spring's path parameters (`/github;jsessionid=1`). Each spelling
//! that reached the app unmatched would be an unverified, undeduplicated delivery, so the
//! normalizer reads a path the way the most lenient of them does, in an order that no spelling can
//! reorder:
//!
//! 1. refuse what servers disagree about (`\`, an encoded `/` or `\`, invalid percent-encoding);
//! 2. decode percent-encoded unreserved characters (`%67` is `g`; `%3B` stays `%3B`, a literal
//!    `;` to Tomcat and Spring, never a parameter delimiter);
//! 3. per segment, strip the path parameter (from the first `;`); a dot segment that carried one
//!    (`..;`, `.;x`: the Tomcat trick) is refused, because servers disagree about what it means;
//! 4. resolve `.` and `..`, and drop empty segments: `//`, a trailing slash, a segment that was
//!    only a parameter (`/;x/`);
//! 5. for a case-insensitive route, compare ASCII case-folded (see [`fold`]).

use std::borrow::Cow;

/// A normalized request path: its segments, without parameters, dots or empty segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    pub segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSlash,
    #[error("the path contains invalid percent-encoding")]
    BadPercent,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path contains a '\\', which some apps read as '/'")]
    Backslash,
    #[error("a dot segment carries a path parameter ('..;'), which servers read differently")]
    DotSegmentParam,
}

impl std::fmt::Display for NormalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        self.segments.iter().try_for_each(|s| write!(f, "/{s}"))
    }
}

impl NormalPath {
    /// Normalizes a request path for matching; an error means no route decision could be trusted (400).
    pub fn parse(raw: &str) -> Result<NormalPath, PathError> {
        let decoded = decode(raw)?;
        let segments = segments(&decoded)?.into_iter().map(str::to_string).collect();
        Ok(NormalPath { segments })
    }

    /// The same path, case-folded for a case-insensitive comparison.
    pub fn folded(&self) -> NormalPath {
        NormalPath { segments: self.segments.iter().map(|s| fold(s)).collect() }
    }
}

/// The normal form of a request path, as text: `/Webhooks/%67ithub;x=1/` is `/Webhooks/github`.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    NormalPath::parse(raw).map(|p| p.to_string())
}

/// A request path's segments, on the stack for any path a webhook uses: matching runs for every
/// request, and two vectors per match were two allocations.
pub type Segments<'a> = smallvec::SmallVec<[&'a str; 8]>;

/// Steps 3 and 4: the segments of a decoded path.
pub fn segments(decoded: &str) -> Result<Segments<'_>, PathError> {
    // Decoding first is safe: it never yields a '/', a '\' or a ';'.
    let mut segments = Segments::new();
    for seg in split_at_byte(decoded, b'/') {
        let (name, param) = match seg.bytes().position(|b| b == b';') {
            Some(at) => (&seg[..at], true),
            None => (seg, false),
        };
        match name {
            "." | ".." if param => return Err(PathError::DotSegmentParam),
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    Ok(segments)
}

/// `s.split(sep)` for an ASCII separator, by a byte loop: `str::split`'s searcher costs more to
/// set up than a webhook path's few bytes take to scan, and it ran for every request.
fn split_at_byte(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    debug_assert!(sep.is_ascii());
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == sep) {
            // Cutting at an ASCII byte keeps both sides valid UTF-8.
            Some(at) => {
                rest = Some(&r[at + 1..]);
                Some(&r[..at])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// [`fold`], borrowing a segment that folding leaves as it is (lower-case ASCII without escapes).
pub fn fold_cow(segment: &str) -> Cow<'_, str> {
    if segment.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase() && b != b'%') {
        Cow::Borrowed(segment)
    } else {
        Cow::Owned(fold(segment))
    }
}

/// ASCII lower case, and the four non-ASCII letters whose Unicode case mapping is ASCII (`ſ` is
/// `S` upper-cased, the Kelvin sign `K` is `k` lower-cased, `ı` and `İ`), raw or percent-encoded:
/// Java's `equalsIgnoreCase` and .NET's `OrdinalIgnoreCase` route `/webhooks/ſtripe` to `stripe`.
pub fn fold(segment: &str) -> String {
    const ASCII_BY_CASE: [(&str, &str); 8] = [
        ("%C5%BF", "s"),
        ("\u{17F}", "s"),
        ("%E2%84%AA", "k"),
        ("\u{212A}", "k"),
        ("%C4%B1", "i"),
        ("\u{131}", "i"),
        ("%C4%B0", "i"),
        ("\u{130}", "i"),
    ];
    let mut out = segment.to_string();
    for (from, to) in ASCII_BY_CASE {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    // The hex digits of an escape stay as they are: canonical, and not letters of the path.
    chars_outside_escapes(&out).map(|(c, letter)| if letter { c.to_ascii_lowercase() } else { c }).collect()
}

/// Whether a segment has a letter whose case a case-insensitive route ignores.
pub fn has_case(segment: &str) -> bool {
    chars_outside_escapes(&fold(segment)).any(|(c, letter)| letter && c.is_ascii_alphabetic())
}

/// Each character, and whether it is one of the path's own (not the hex digits of an escape).
fn chars_outside_escapes(segment: &str) -> impl Iterator<Item = (char, bool)> + '_ {
    let mut hex_left = 0;
    segment.chars().map(move |c| match c {
        '%' => {
            hex_left = 2;
            (c, false)
        }
        _ if hex_left > 0 => {
            hex_left -= 1;
            (c, false)
        }
        _ => (c, true),
    })
}

/// Steps 1 and 2 (see the module's comment): the path with its unreserved characters decoded,
/// borrowed as it is when it has nothing to decode (the common case: no allocation per request).
pub fn decode(raw: &str) -> Result<Cow<'_, str>, PathError> {
    // One pass for both questions, as the path is nearly always plain.
    let mut escaped = false;
    for b in raw.bytes() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'%' => escaped = true,
            _ => {}
        }
    }
    if !escaped {
        return Ok(Cow::Borrowed(raw));
    }
    // Bytes, not chars: a non-ASCII character is several bytes and must pass through whole.
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercent)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
            .ok_or(PathError::BadPercent)?;
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSlash),
            v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(v),
            // Anything else stays encoded, in one canonical (upper-case) spelling.
            v => out.extend_from_slice(format!("%{v:02X}").as_bytes()),
        }
        i += 3;
    }
    // Only ASCII was decoded and every other byte copied whole, so this is the input's UTF-8.
    String::from_utf8(out).map(Cow::Owned).map_err(|_| PathError::BadPercent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_byte_is_str_split() {
        for s in ["", "/", "//", "/a", "a/", "/webhooks/github", "a//b///c", "/ſ/é/", ";/;;/"] {
            for sep in [b'/', b';'] {
                let ours: Vec<_> = split_at_byte(s, sep).collect();
                let std: Vec<_> = s.split(char::from(sep)).collect();
                assert_eq!(ours, std, "{s:?} at {:?}", char::from(sep));
            }
        }
    }

    #[test]
    fn normalization_table() {
        let cases = [
            ("/webhooks/github", Ok("/webhooks/github")),
            ("//webhooks/github", Ok("/webhooks/github")),
            ("/webhooks//github", Ok("/webhooks/github")),
            ("/webhooks/%67ithub", Ok("/webhooks/github")),
            ("/webhooks/%67%69thub", Ok("/webhooks/github")),
            ("/webhooks/./github", Ok("/webhooks/github")),
            ("/x/../webhooks/github", Ok("/webhooks/github")),
            ("/webhooks/%2e/github", Ok("/webhooks/github")),
            ("/webhooks/%2E%2E/webhooks/github", Ok("/webhooks/github")),
            // A trailing slash, a trailing dot segment.
            ("/webhooks/github/", Ok("/webhooks/github")),
            ("/webhooks/github//", Ok("/webhooks/github")),
            ("/webhooks/github/.", Ok("/webhooks/github")),
            ("/webhooks/github/./", Ok("/webhooks/github")),
            ("/webhooks/github/x/..", Ok("/webhooks/github")),
            ("/api/", Ok("/api")),
            ("/api/.", Ok("/api")),
            ("/", Ok("/")),
            ("", Ok("/")),
            // Path parameters, in any segment, are not part of the path.
            ("/webhooks/github;x=1", Ok("/webhooks/github")),
            ("/webhooks/github;", Ok("/webhooks/github")),
            ("/webhooks/github;/", Ok("/webhooks/github")),
            ("/webhooks/github/;", Ok("/webhooks/github")),
            ("/webhooks/github/;x=1", Ok("/webhooks/github")),
            ("/webhooks;a=b/github;c=d", Ok("/webhooks/github")),
            ("/webhooks/;x/github", Ok("/webhooks/github")),
            ("/;x/webhooks/github", Ok("/webhooks/github")),
            ("/webhooks/github;x=1;y=2/", Ok("/webhooks/github")),
            ("/webhooks/github;a/b", Ok("/webhooks/github/b")),
            ("/Webhooks/%67ithub;x=1/", Ok("/Webhooks/github")),
            ("/webhooks/github;x=%2e%2e", Ok("/webhooks/github")),
            // An encoded ';' is a literal character of the segment (as in Tomcat and Spring).
            ("/webhooks/github%3Bx=1", Ok("/webhooks/github%3Bx=1")),
            ("/webhooks/github%3bx=1", Ok("/webhooks/github%3Bx=1")),
            // A dot segment behind a parameter: servers disagree about it.
            ("/x/..;/webhooks/github", Err(PathError::DotSegmentParam)),
            ("/x/..;x=1/webhooks/github", Err(PathError::DotSegmentParam)),
            ("/x/.;/..;/webhooks/github", Err(PathError::DotSegmentParam)),
            ("/..;/webhooks/github", Err(PathError::DotSegmentParam)),
            ("/x/%2e%2e;/webhooks/github", Err(PathError::DotSegmentParam)),
            ("/x/%2E;/webhooks/github", Err(PathError::DotSegmentParam)),
            ("/webhooks/github/.;", Err(PathError::DotSegmentParam)),
            // Not dot segments.
            ("/x/...;/y", Ok("/x/.../y")),
            ("/x/..a;/y", Ok("/x/..a/y")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%c3%a9", Ok("/a%C3%A9")),
            ("/webhooks%2fgithub", Err(PathError::EncodedSlash)),
            ("/webhooks%2Fgithub", Err(PathError::EncodedSlash)),
            ("/webhooks%5cgithub", Err(PathError::EncodedSlash)),
            ("/webhooks/github;x=%2F", Err(PathError::EncodedSlash)),
            ("/webhooks/%6", Err(PathError::BadPercent)),
            ("/webhooks/%zz", Err(PathError::BadPercent)),
            ("/webhooks/%+1", Err(PathError::BadPercent)),
            ("/webhooks/github;x=%zz", Err(PathError::BadPercent)),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../..", Err(PathError::AboveRoot)),
            ("/hooks\\x", Err(PathError::Backslash)),
            ("/é%20", Ok("/é%20")),
            ("/webhooks/%41/../é", Ok("/webhooks/é")),
        ];
        for (input, want) in cases {
            let got = normalize_path(input);
            assert_eq!(got.as_deref().map_err(Clone::clone), want, "{input}");
        }
    }

    #[test]
    fn folding_table() {
        let cases = [
            ("GitHub", "github"),
            ("github", "github"),
            ("%C3%A9", "%C3%A9"),
            ("%C3%89", "%C3%89"),
            ("A%C3%89Z", "a%C3%89z"),
            ("\u{17F}tripe", "stripe"),
            ("%C5%BFtripe", "stripe"),
            ("\u{212A}ey", "key"),
            ("%E2%84%AAey", "key"),
            ("g\u{131}thub", "github"),
            ("G%C4%B0THUB", "github"),
            ("É", "É"),
        ];
        for (input, want) in cases {
            assert_eq!(fold(input), want, "{input}");
        }
        assert!(has_case("a") && has_case("\u{17F}") && !has_case("123-_") && !has_case("%C3%A9"));
    }
}
