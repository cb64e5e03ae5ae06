//! What a route matches: a path or a prefix of whole segments, compared with or without case, and
//! a set of methods.

use super::path::{NormalPath, fold, has_case};
use http::Method;
use std::borrow::Cow;

/// A route's `match:`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    kind: Kind,
    /// As configured, for `check`.
    written: String,
    /// The configured path's segments; folded unless `case_sensitive`.
    segments: Vec<String>,
    case_sensitive: bool,
    /// Upper-cased; empty: any method.
    methods: Vec<Method>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `path`: these segments and no others.
    Exact,
    /// `path_prefix`: these segments, then any.
    Prefix,
}

impl Matcher {
    pub fn compile(cfg: &crate::config::MatchConfig) -> Result<Matcher, String> {
        let (kind, written, field) = match (&cfg.path, &cfg.path_prefix) {
            (Some(p), None) => (Kind::Exact, p, "match.path"),
            (None, Some(p)) => (Kind::Prefix, p, "match.path_prefix"),
            _ => return Err("match: give exactly one of path or path_prefix".into()),
        };
        let path = config_path(written, field)?;
        let segments = match cfg.case_sensitive {
            true => path.segments,
            false => path.folded().segments,
        };
        let methods = cfg
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("match.methods: {m:?} is not an HTTP method"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher { kind, written: written.clone(), segments, case_sensitive: cfg.case_sensitive, methods })
    }

    /// `path` and `folded` are the request's normalized segments and the same, folded.
    pub fn matches(&self, method: &Method, path: &[&str], folded: &[Cow<'_, str>]) -> bool {
        let path_ok = match self.case_sensitive {
            true => self.path_matches(path),
            false => self.path_matches(folded),
        };
        // Methods are case-sensitive in HTTP, but not to every app (Werkzeug upper-cases them):
        // `post` must not slip past a POST route.
        path_ok
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.as_str().eq_ignore_ascii_case(method.as_str())))
    }

    fn path_matches<S: AsRef<str>>(&self, path: &[S]) -> bool {
        let n = self.segments.len();
        let len_ok = match self.kind {
            Kind::Exact => path.len() == n,
            Kind::Prefix => path.len() >= n,
        };
        len_ok && path.iter().zip(&self.segments).all(|(theirs, ours)| theirs.as_ref() == ours)
    }

    /// Whether every request `later` could match is matched by this one (so `later`, after it, never is).
    pub fn covers(&self, later: &Matcher) -> bool {
        let methods = self.methods.is_empty()
            || (!later.methods.is_empty() && later.methods.iter().all(|m| self.methods.contains(m)));
        // A case-sensitive route covers a case-insensitive one only where case cannot differ.
        let case = !self.case_sensitive || later.case_sensitive || !later.segments.iter().any(|s| has_case(s));
        let theirs: Vec<String> = match self.case_sensitive {
            true => later.segments.clone(),
            false => later.segments.iter().map(|s| fold(s)).collect(),
        };
        let path = match (self.kind, later.kind) {
            (Kind::Exact, Kind::Exact) => theirs == self.segments,
            (Kind::Exact, Kind::Prefix) => false,
            (Kind::Prefix, _) => theirs.starts_with(&self.segments),
        };
        methods && case && path
    }

    /// `path /webhooks/github (POST)`, as `check` prints it.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::Exact => "path",
            Kind::Prefix => "path_prefix",
        };
        let case = if self.case_sensitive { ", case-sensitive" } else { "" };
        let methods = if self.methods.is_empty() {
            "any method".to_string()
        } else {
            self.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
        };
        format!("{kind} {} ({methods}{case})", self.written)
    }
}

/// A configured path: absolute, without parameters, in normal form but for an optional trailing
/// slash (`/api/` is `/api`, and a prefix of whole segments either way).
fn config_path(p: &str, field: &str) -> Result<NormalPath, String> {
    if !p.starts_with('/') {
        return Err(format!("{field}: {p:?} must start with '/'"));
    }
    if p.contains(';') {
        return Err(format!("{field}: {p:?}: path parameters (';') are never part of a matched path"));
    }
    let path = NormalPath::parse(p).map_err(|e| format!("{field}: {p:?}: {e}"))?;
    let normal = path.to_string();
    if p != normal && p != format!("{normal}/") {
        return Err(format!("{field}: {p:?} is not in normal form; write {normal:?}"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MatchConfig;

    fn matcher(path: &str, prefix: bool, methods: &[&str], case_sensitive: bool) -> Matcher {
        let (path, path_prefix) = if prefix { (None, Some(path.into())) } else { (Some(path.into()), None) };
        let methods = methods.iter().map(|m| m.to_string()).collect();
        Matcher::compile(&MatchConfig { path, path_prefix, methods, case_sensitive }).unwrap()
    }

    fn hits(m: &Matcher, method: &str, raw: &str) -> bool {
        let decoded = super::super::path::decode(raw).unwrap();
        let path = super::super::path::segments(&decoded).unwrap();
        let folded: Vec<_> = path.iter().map(|s| super::super::path::fold_cow(s)).collect();
        m.matches(&Method::from_bytes(method.as_bytes()).unwrap(), &path, &folded)
    }

    #[test]
    fn matching_table() {
        let github = matcher("/webhooks/github", false, &["POST"], false);
        let stripe = matcher("/webhooks/stripe", true, &[], false);
        let api = matcher("/api/", true, &[], false);
        let exact_slash = matcher("/api/", false, &[], false);
        let strict = matcher("/Hooks/A", false, &[], true);
        let root = matcher("/", true, &[], false);
        let cases: &[(&Matcher, &str, &str, bool)] = &[
            (&github, "POST", "/webhooks/github", true),
            (&github, "POST", "/webhooks/github/", true),
            (&github, "POST", "/Webhooks/GitHub", true),
            (&github, "POST", "/WEBHOOKS/GITHUB/", true),
            (&github, "POST", "/webhooks/github;x=1", true),
            (&github, "POST", "/webhooks/github/.", true),
            (&github, "POST", "/Webhooks/%67ithub;x=1/", true),
            (&github, "POST", "/webhooks/;x/github", true),
            (&github, "POST", "/webhooks/g\u{131}thub", true),
            (&github, "post", "/webhooks/github", true),
            (&github, "GET", "/webhooks/github", false),
            (&github, "POST", "/webhooks/github/x", false),
            (&github, "POST", "/webhooks/githubx", false),
            (&github, "POST", "/webhooks/github%3Bx=1", false),
            (&stripe, "POST", "/webhooks/stripe", true),
            (&stripe, "POST", "/webhooks/stripe/", true),
            (&stripe, "POST", "/webhooks/stripe/x", true),
            (&stripe, "POST", "/webhooks/Stripe;v=2/x", true),
            (&stripe, "POST", "/webhooks/%C5%BFtripe", true),
            (&stripe, "POST", "/webhooks/stripe-legacy", false),
            (&stripe, "POST", "/webhooks/stripex/y", false),
            (&stripe, "POST", "/webhooks", false),
            (&api, "PATCH", "/api", true),
            (&api, "PATCH", "/api/", true),
            (&api, "PATCH", "/API/x/y", true),
            (&api, "PATCH", "/apix", false),
            (&exact_slash, "GET", "/api", true),
            (&exact_slash, "GET", "/api/", true),
            (&exact_slash, "GET", "/api/x", false),
            (&strict, "POST", "/Hooks/A", true),
            (&strict, "POST", "/Hooks/A/;x=1", true),
            (&strict, "POST", "/hooks/a", false),
            (&strict, "POST", "/HOOKS/A", false),
            (&root, "GET", "/", true),
            (&root, "GET", "/anything/at/all", true),
        ];
        for (m, method, path, want) in cases {
            assert_eq!(hits(m, method, path), *want, "{} {method} {path}", m.describe());
        }
    }

    #[test]
    fn config_paths() {
        for ok in ["/", "/api", "/api/", "/Webhooks/GitHub", "/a%C3%A9", "/a-b_c.d~e"] {
            assert!(config_path(ok, "match.path").is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("api", "must start with '/'"),
            ("//api", "not in normal form"),
            ("/api//", "not in normal form"),
            ("/a/./b", "not in normal form"),
            ("/%61pi", "not in normal form"),
            ("/a%c3%a9", "not in normal form"),
            ("/api;x=1", "path parameters"),
            ("/a%2Fb", "encoded '/'"),
            ("/..", "above the root"),
        ] {
            let e = config_path(bad, "match.path").unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn covering_table() {
        let m = matcher;
        let cases = [
            (m("/webhooks/github", false, &[], false), m("/Webhooks/GitHub/", false, &["POST"], false), true),
            (m("/webhooks/", true, &[], false), m("/webhooks/github", false, &[], false), true),
            (m("/webhooks", true, &[], false), m("/webhooks/github", true, &[], true), true),
            (m("/", true, &[], false), m("/x", false, &[], false), true),
            (m("/webhooks", true, &["POST"], false), m("/webhooks/github", false, &["POST"], false), true),
            (m("/webhooks", true, &["POST", "PUT"], false), m("/webhooks/a", false, &["PUT"], false), true),
            (m("/webhooks", true, &["POST"], false), m("/webhooks/github", false, &[], false), false),
            (m("/webhooks", true, &["POST"], false), m("/webhooks/github", false, &["GET"], false), false),
            (m("/webhooks/github", false, &[], false), m("/webhooks/github", true, &[], false), false),
            (m("/webhooks/stripe", true, &[], false), m("/webhooks/stripe-legacy", true, &[], false), false),
            (m("/webhooks/github", false, &[], true), m("/webhooks/github", false, &[], false), false),
            (m("/webhooks/github", false, &[], true), m("/webhooks/github", false, &[], true), true),
            (m("/webhooks/github", false, &[], true), m("/webhooks/GitHub", false, &[], true), false),
            (m("/webhooks/github", false, &[], false), m("/webhooks/GitHub", false, &[], true), true),
            (m("/v1/123", false, &[], true), m("/v1/123", false, &[], false), false),
            (m("/123", false, &[], true), m("/123", false, &[], false), true),
        ];
        for (earlier, later, want) in cases {
            assert_eq!(earlier.covers(&later), want, "{} covers {}", earlier.describe(), later.describe());
        }
    }
}
