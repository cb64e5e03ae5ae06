//! Stage `route`: normalize the request path and find the first route that matches it.
//!
//! Matching happens on the normalized path so that `/webhooks/%67ithub`, `//webhooks/github` and
//! `/webhooks/./github` cannot slip past the github route as an unprotected pass-through. The
//! request itself is forwarded as it arrived.

use crate::config::{
    Concurrent, Dur, FingerprintSpec, Policy, RouteConfig, RouteOptions, ScopeSpec, StatusPattern,
};
use crate::fingerprint::Fingerprinter;
use crate::key::KeyExtractor;
use crate::preset::Preset;
use crate::verify::Verifier;
use http::{Method, StatusCode};
use std::sync::Arc;

/// A compiled route: what it matches, how it finds its key, and its policy.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// Position in the route table, for per-route state kept outside the route (metrics).
    pub index: usize,
    matcher: PathMatch,
    methods: Vec<Method>,
    pub key: KeyExtractor,
    pub scope: Option<KeyExtractor>,
    /// No `scope` field and none from a preset: keys are scoped by the request's credentials
    /// (`Authorization`, `Cookie`), so one client's stored response never replays to another.
    pub credentials_scoped: bool,
    pub fingerprint: Fingerprinter,
    /// Checks the provider's signature before anything is claimed.
    pub verifier: Option<Verifier>,
    /// The preset's documented retry window, for `check`'s warning about a shorter ttl.
    retry_window: Option<std::time::Duration>,
    pub store_status: StatusSet,
    pub forward_key_header: http::HeaderName,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl Route {
    /// Builds a route from its config; the error says which field is wrong and why.
    pub fn compile(cfg: &RouteConfig, defaults: &RouteOptions, upstream_timeout: Dur) -> Result<Route, String> {
        let preset = cfg.preset.map(Preset::defaults);
        // Precedence: the route's own field, then the preset, then `defaults:`, then built-ins.
        let ttl = cfg.ttl.or(preset.as_ref().map(|p| p.ttl));
        let policy = Policy::resolve(defaults, &RouteConfig { ttl, ..cfg.clone() });
        let matcher = match (&cfg.matcher.path, &cfg.matcher.path_prefix) {
            (Some(p), None) => PathMatch::Exact(config_path(p, "match.path")?),
            (None, Some(p)) => PathMatch::Prefix(config_path(p, "match.path_prefix")?),
            _ => return Err("match: give exactly one of path or path_prefix".into()),
        };
        let methods = cfg
            .matcher
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("match.methods: {m:?} is not an HTTP method"))
            })
            .collect::<Result<_, _>>()?;
        let key_spec = cfg
            .key
            .as_ref()
            .or(preset.as_ref().map(|p| &p.key))
            .ok_or("key: is required (e.g. key: { header: Idempotency-Key }), or a preset")?;
        let key = KeyExtractor::compile(key_spec).map_err(|e| format!("key: {e}"))?;
        let (scope_spec, credentials_scoped) = match &cfg.scope {
            Some(ScopeSpec::Shared(_)) => (None, false),
            Some(ScopeSpec::From(spec)) => (Some(spec), false),
            None => {
                let preset_scope = preset.as_ref().and_then(|p| p.scope.as_ref());
                (preset_scope, preset_scope.is_none())
            }
        };
        let scope = scope_spec.map(KeyExtractor::compile).transpose().map_err(|e| format!("scope: {e}"))?;
        let verifier =
            cfg.verify.as_ref().map(|v| Verifier::compile(v, preset.as_ref().map(|p| &p.scheme))).transpose()?;
        let fingerprint = Fingerprinter::compile(&policy.fingerprint).map_err(|e| format!("fingerprint: {e}"))?;
        let store_status = StatusSet::parse(&policy.store_status).map_err(|e| format!("store_status: {e}"))?;
        let forward_key_header = http::HeaderName::from_bytes(policy.forward_key_header.as_bytes())
            .map_err(|_| format!("forward_key_header: {:?} is not a header name", policy.forward_key_header))?;
        check_policy(&policy, upstream_timeout)?;
        Ok(Route {
            name: cfg.name.as_str().into(),
            index: 0,
            matcher,
            methods,
            key,
            scope,
            credentials_scoped,
            fingerprint,
            verifier,
            retry_window: preset.as_ref().map(|p| p.retry_window),
            store_status,
            forward_key_header,
            policy,
        })
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        let path_ok = match &self.matcher {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        };
        path_ok && (self.methods.is_empty() || self.methods.contains(method))
    }

    /// What `check` should warn about: a ttl shorter than the provider's retry window lets a late
    /// retry through as a first delivery.
    pub fn warnings(&self) -> Vec<String> {
        match self.retry_window {
            Some(window) if self.policy.ttl.0 < window => vec![format!(
                "route {}: ttl {} is shorter than the provider's retry window ({}); late retries will be forwarded again",
                self.name,
                self.policy.ttl,
                Dur(window)
            )],
            _ => Vec::new(),
        }
    }

    /// What `check` prints for this route.
    pub fn describe(&self) -> String {
        let (kind, path) = match &self.matcher {
            PathMatch::Exact(p) => ("path", p),
            PathMatch::Prefix(p) => ("path_prefix", p),
        };
        let methods = if self.methods.is_empty() {
            "any method".to_string()
        } else {
            self.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
        };
        let p = &self.policy;
        format!(
            "{name}: {kind} {path} ({methods}); key {key}{scope}; ttl {ttl}, lease {lease}, concurrent {conc}, \
             store_status {status:?}, max_body {mb}, max_response_body {mrb}, missing_key {mk}, fingerprint {fp}",
            name = self.name,
            key = self.key.describe(),
            scope = match (&self.scope, self.credentials_scoped) {
                (Some(s), _) => format!(", scope {}", s.describe()),
                (None, true) => ", scope credentials".to_string(),
                (None, false) => ", scope none".to_string(),
            } + &self.verifier.as_ref().map(|v| format!(", verify {}", v.describe())).unwrap_or_default(),
            ttl = p.ttl,
            lease = p.lease,
            // As the YAML spells them.
            conc = format!("{:?}", p.concurrent).to_lowercase(),
            status = p.store_status.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            mb = p.max_body,
            mrb = p.max_response_body,
            mk = format!("{:?}", p.missing_key).to_lowercase(),
            fp = match &p.fingerprint {
                FingerprintSpec::None => "none".to_string(),
                FingerprintSpec::Body => "body".to_string(),
                FingerprintSpec::Json(pointers) => format!("json {pointers:?}"),
            },
        )
    }
}

fn check_policy(p: &Policy, upstream_timeout: Dur) -> Result<(), String> {
    if p.lease <= upstream_timeout {
        return Err(format!("lease: {} must be longer than upstream.timeout ({upstream_timeout})", p.lease));
    }
    if p.ttl.0.is_zero() {
        return Err("ttl: must be greater than 0".into());
    }
    if p.concurrent == Concurrent::Wait && p.wait_timeout.0.is_zero() {
        return Err("wait_timeout: must be greater than 0 with concurrent: wait".into());
    }
    if p.max_key_length == 0 {
        return Err("max_key_length: must be at least 1".into());
    }
    Ok(())
}

/// A configured match path must already be in normal form, so that it can ever match.
fn config_path(p: &str, field: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{field}: {p:?} must start with '/'"));
    }
    match normalize_path(p) {
        Ok(n) if n == p => Ok(n),
        Ok(n) => Err(format!("{field}: {p:?} is not in normal form; write {n:?}")),
        Err(e) => Err(format!("{field}: {p:?}: {e}")),
    }
}

/// Which upstream statuses complete a key: exact codes (`200`) and classes (`2xx`).
#[derive(Debug, Clone)]
pub struct StatusSet {
    classes: [bool; 6],
    codes: Vec<u16>,
}

impl StatusSet {
    pub fn parse(items: &[StatusPattern]) -> Result<StatusSet, String> {
        let mut set = StatusSet { classes: [false; 6], codes: Vec::new() };
        for StatusPattern(item) in items {
            let s = item.trim().to_ascii_lowercase();
            match s.as_bytes() {
                [c @ b'1'..=b'5', b'x', b'x'] => set.classes[(c - b'0') as usize] = true,
                _ => match s.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => set.codes.push(code),
                    _ => {
                        return Err(format!("{item:?} is neither a status code (100-599) nor a class like 2xx"));
                    }
                },
            }
        }
        Ok(set)
    }

    pub fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        self.classes[(code / 100) as usize % 6] || self.codes.contains(&code)
    }
}

/// The ordered route table. First match wins.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

/// The outcome of stage `route`.
pub enum RouteMatch {
    Matched(Arc<Route>),
    Unmatched,
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
}

impl Router {
    pub fn new(routes: Vec<Arc<Route>>) -> Router {
        Router { routes }
    }

    pub fn from_config(cfg: &crate::config::Config) -> Result<Router, String> {
        let routes = cfg
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Route::compile(r, &cfg.defaults, cfg.upstream.timeout).map(|r| Arc::new(Route { index, ..r }))
            })
            .collect::<Result<_, _>>()?;
        Ok(Router::new(routes))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Stage `route`. A path that cannot be normalized safely is an error (400), never a pass-through.
    pub fn route(&self, method: &Method, raw_path: &str) -> Result<RouteMatch, PathError> {
        if self.routes.is_empty() {
            return Ok(RouteMatch::Unmatched);
        }
        let path = normalize_path(raw_path)?;
        Ok(self
            .routes
            .iter()
            .find(|r| r.matches(method, &path))
            .map_or(RouteMatch::Unmatched, |r| RouteMatch::Matched(r.clone())))
    }
}

/// Decodes percent-encoded unreserved characters, collapses repeated slashes and resolves dot
/// segments. Encoded slashes and invalid escapes are refused: their meaning differs between
/// servers, so no route decision could be trusted.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }
    let decoded = decode_unreserved(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    if !raw.contains('%') {
        return Ok(raw.to_string());
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
    String::from_utf8(out).map_err(|_| PathError::BadPercent)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("/api/", Ok("/api/")),
            ("/api/.", Ok("/api/")),
            ("/", Ok("/")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%c3%a9", Ok("/a%C3%A9")),
            ("/webhooks%2fgithub", Err(PathError::EncodedSlash)),
            ("/webhooks%2Fgithub", Err(PathError::EncodedSlash)),
            ("/webhooks%5cgithub", Err(PathError::EncodedSlash)),
            ("/webhooks/%6", Err(PathError::BadPercent)),
            ("/webhooks/%zz", Err(PathError::BadPercent)),
            ("/webhooks/%+1", Err(PathError::BadPercent)),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../..", Err(PathError::AboveRoot)),
            ("/hooks\\x", Err(PathError::Backslash)),
            ("/é%20", Ok("/é%20")),
            ("/webhooks/%41/../é", Ok("/webhooks/é")),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref().map_err(Clone::clone), want, "{input}");
        }
    }

    #[test]
    fn status_sets() {
        let set = StatusSet::parse(&[StatusPattern("2xx".into()), StatusPattern("409".into())]).unwrap();
        for (code, want) in
            [(200, true), (204, true), (299, true), (409, true), (404, false), (500, false), (302, false)]
        {
            assert_eq!(set.contains(StatusCode::from_u16(code).unwrap()), want, "{code}");
        }
        assert!(StatusSet::parse(&[StatusPattern("6xx".into())]).is_err());
        assert!(StatusSet::parse(&[StatusPattern("2x".into())]).is_err());
        assert!(StatusSet::parse(&[StatusPattern("99".into())]).is_err());
    }
}
