//! Stage `route`: normalize the request path and find the first route that matches it.
//!
//! Matching happens on the normalized path (`path.rs`) so that `/webhooks/%67ithub`,
//! `/Webhooks/GitHub/`, `/webhooks/github;x=1` and `/webhooks/./github` cannot slip past the github
//! route as an unprotected pass-through; a route matches whole segments (`matcher.rs`). The request
//! itself is forwarded as it arrived.

mod matcher;
mod path;

pub use matcher::Matcher;
pub use path::{NormalPath, PathError, normalize_path};

use crate::config::{
    Concurrent, Dur, FingerprintSpec, Policy, RouteConfig, RouteOptions, ScopeSpec, StatusPattern, Unmatched,
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
    matcher: Matcher,
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
    /// The stale-event guard, if the route has one.
    pub stale: Option<StaleGuard>,
    /// What `check` mentions on a route without a guard whose preset suggests one.
    stale_suggestion: Option<String>,
    /// On an async route: the source of `delivery.order_by`.
    pub order_by: Option<KeyExtractor>,
}

/// Where a delivery's entity and version come from, and what a stale one gets.
#[derive(Debug)]
pub struct StaleGuard {
    pub entity: KeyExtractor,
    pub version: KeyExtractor,
    pub action: crate::config::StaleAction,
}

impl StaleGuard {
    fn compile(
        spec: &crate::config::StaleSpec,
        preset: Option<&crate::preset::PresetDefaults>,
    ) -> Result<StaleGuard, String> {
        let cfg = match spec {
            crate::config::StaleSpec::Guard(cfg) => cfg,
            crate::config::StaleSpec::Preset(_) => preset
                .and_then(|p| p.stale.as_ref())
                .ok_or("stale: preset needs a preset that suggests a guard (stripe, shopify)")?,
        };
        Ok(StaleGuard {
            entity: KeyExtractor::compile(&cfg.entity).map_err(|e| format!("stale.entity: {e}"))?,
            version: KeyExtractor::compile(&cfg.version).map_err(|e| format!("stale.version: {e}"))?,
            action: cfg.action,
        })
    }

    fn describe(&self) -> String {
        let action = format!("{:?}", self.action).to_lowercase();
        format!(
            "; stale guard: entity {}, version {}, action {action}",
            self.entity.describe(),
            self.version.describe()
        )
    }
}

impl Route {
    /// Builds a route from its config; the error says which field is wrong and why.
    pub fn compile(cfg: &RouteConfig, defaults: &RouteOptions, upstream_timeout: Dur) -> Result<Route, String> {
        let preset = cfg.preset.map(Preset::defaults);
        // Precedence: the route's own field, then the preset, then `defaults:`, then built-ins.
        let ttl = cfg.ttl.or(preset.as_ref().map(|p| p.ttl));
        let policy = Policy::resolve(defaults, &RouteConfig { ttl, ..cfg.clone() });
        let matcher = Matcher::compile(&cfg.matcher)?;
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
        let stale = cfg.stale.as_ref().map(|spec| StaleGuard::compile(spec, preset.as_ref())).transpose()?;
        check_policy(&policy, upstream_timeout)?;
        check_delivery(&policy.delivery, &policy, stale.is_some())?;
        let order_by = policy
            .delivery
            .order_by
            .as_ref()
            .filter(|_| policy.delivery.is_async())
            .map(KeyExtractor::compile)
            .transpose()
            .map_err(|e| format!("delivery.order_by: {e}"))?;
        if stale.is_some() && policy.lease.0 <= policy.wait_timeout.0 + upstream_timeout.0 {
            // A delivery may wait `wait_timeout` for its entity, then the app may take
            // `upstream.timeout`, all under the key's lease.
            return Err(format!(
                "lease: {} must be longer than wait_timeout ({}) plus upstream.timeout ({upstream_timeout}) on a route with stale",
                policy.lease, policy.wait_timeout
            ));
        }
        Ok(Route {
            name: cfg.name.as_str().into(),
            index: 0,
            matcher,
            key,
            scope,
            credentials_scoped,
            fingerprint,
            verifier,
            retry_window: preset.as_ref().map(|p| p.retry_window),
            store_status,
            forward_key_header,
            policy,
            stale_suggestion: preset
                .as_ref()
                .and_then(|p| p.stale.as_ref())
                .filter(|_| stale.is_none())
                .and_then(|g| StaleGuard::compile(&crate::config::StaleSpec::Guard(g.clone()), None).ok())
                .map(|g| format!("; the preset suggests `stale: preset`{}", g.describe())),
            stale,
            order_by,
        })
    }

    /// `delivery: { mode: async }`: acknowledged once stored, delivered by a worker.
    pub fn is_async(&self) -> bool {
        self.policy.delivery.is_async()
    }

    /// In shadow mode: forward everything as it arrived, count what enforcing would do.
    pub fn shadow(&self) -> bool {
        self.policy.mode == crate::config::RouteMode::Shadow
    }

    fn describe_delivery(&self) -> String {
        let d = &self.policy.delivery;
        if !d.is_async() {
            return String::new();
        }
        let order = self.order_by.as_ref().map(|o| format!(", order_by {}", o.describe())).unwrap_or_default();
        format!(
            "; delivery async (ack {}, attempts {}, backoff {}..{}, max_age {}, concurrency {}, queue_limit {}{order})",
            d.ack_status, d.attempts, d.backoff.initial, d.backoff.max, d.max_age, d.concurrency, d.queue_limit
        )
    }

    /// What `check` should warn about: a ttl shorter than the provider's retry window lets a late
    /// retry through as a first delivery.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.stale.is_some() && self.verifier.is_none() {
            warnings.push(format!(
                "route {}: stale without verify: a forged event with a high version would hide the entity's real updates",
                self.name
            ));
        }
        if self.shadow() && self.stale.is_some() {
            warnings.push(format!(
                "route {}: shadow mode forwards everything; its stale guard applies once it enforces",
                self.name
            ));
        }
        warnings.extend(self.retry_warning());
        warnings
    }

    fn retry_warning(&self) -> Vec<String> {
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
        let p = &self.policy;
        format!(
            "{name}: {matcher}; key {key}{scope}; ttl {ttl}, lease {lease}, concurrent {conc}, \
             store_status {status:?}, max_body {mb}, max_response_body {mrb}, missing_key {mk}, fingerprint {fp}{mode}",
            name = self.name,
            mode = if self.shadow() { "; mode shadow (forwards everything)".to_string() } else { String::new() }
                + &self.stale.as_ref().map(StaleGuard::describe).unwrap_or_default()
                + self.stale_suggestion.as_deref().unwrap_or_default()
                + &self.describe_delivery(),
            matcher = self.matcher.describe(),
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

fn check_delivery(d: &crate::config::DeliveryConfig, p: &Policy, stale: bool) -> Result<(), String> {
    if !d.is_async() {
        return Ok(());
    }
    if !(200..300).contains(&d.ack_status) {
        return Err(format!("delivery.ack_status: {} is not a 2xx status", d.ack_status));
    }
    if d.attempts == 0 {
        return Err("delivery.attempts: must be at least 1".into());
    }
    if d.concurrency == 0 {
        return Err("delivery.concurrency: must be at least 1".into());
    }
    if d.queue_limit == 0 {
        return Err("delivery.queue_limit: must be at least 1".into());
    }
    if d.backoff.initial.0.is_zero() || d.backoff.initial > d.backoff.max {
        return Err(format!(
            "delivery.backoff: initial ({}) must be above 0 and at most max ({})",
            d.backoff.initial, d.backoff.max
        ));
    }
    if stale {
        return Err("stale: cannot be used with delivery: { mode: async } (yet)".into());
    }
    if p.fingerprint != crate::config::FingerprintSpec::None {
        // The inbox keeps no payload digest yet: a reused key with another payload would be
        // acknowledged as a duplicate instead of refused.
        return Err("fingerprint: cannot be used with delivery: { mode: async } (yet); set fingerprint: none".into());
    }
    if p.mode == crate::config::RouteMode::Shadow {
        return Err(
            "mode: shadow forwards every request as it arrives; it cannot be used with delivery: { mode: async }"
                .into(),
        );
    }
    Ok(())
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
    /// What becomes of a request no route matches; here so that it reloads with the routes.
    unmatched: Unmatched,
}

/// The outcome of stage `route`.
pub enum RouteMatch {
    Matched(Arc<Route>),
    Unmatched,
}

impl Router {
    pub fn new(routes: Vec<Arc<Route>>, unmatched: Unmatched) -> Router {
        Router { routes, unmatched }
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
        Ok(Router::new(routes, cfg.unmatched))
    }

    /// With `unmatched: reject`, a request no route matches gets 404 instead of reaching the app.
    pub fn rejects_unmatched(&self) -> bool {
        self.unmatched == Unmatched::Reject
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
        let decoded = path::decode(raw_path)?;
        let path = path::segments(&decoded)?;
        let folded: smallvec::SmallVec<[_; 8]> = path.iter().map(|s| path::fold_cow(s)).collect();
        Ok(self
            .routes
            .iter()
            .find(|r| r.matcher.matches(method, &path, &folded))
            .map_or(RouteMatch::Unmatched, |r| RouteMatch::Matched(r.clone())))
    }

    /// What `check` should warn about: each route's own warnings, and routes that an earlier route
    /// shadows (every request they could match is matched before them).
    pub fn warnings(&self) -> Vec<String> {
        let shadowed = self.routes.iter().enumerate().filter_map(|(i, later)| {
            let earlier = self.routes[..i].iter().find(|e| e.matcher.covers(&later.matcher))?;
            Some(format!(
                "route {}: never matches; the earlier route {} ({}) matches every request it could",
                later.name,
                earlier.name,
                earlier.matcher.describe()
            ))
        });
        self.routes.iter().flat_map(|r| r.warnings()).chain(shadowed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
