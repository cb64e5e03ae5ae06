//! What every request on the proxy (or through an embedded [`crate::IdempotencyLayer`]) shares:
//! the routes serving now, the records, the waiters, the memory budget and the claim tokens.
//!
//! The layers of [`crate::stack`] each hold an `Arc<Gate>` and take from it what their stage
//! needs; the admin listener and the reloader reach the same state through it.

use crate::budget::Budget;
use crate::config::{KeyLogging, ServerConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::route::Router;
use crate::scope::LegacyScope;
use crate::store::Records;
use crate::waiters::Waiters;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

pub struct Gate {
    /// Swapped whole by a config reload; each request works with the set it started with.
    routes: ArcSwap<Routes>,
    pub records: Records,
    pub(crate) waiters: Waiters,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tokens: Tokens,
    pub(crate) key_logging: KeyLogging,
    /// `server.body_read_timeout`.
    pub(crate) body_read_timeout: Duration,
    /// `server.max_buffered_bytes`, shared by every request.
    pub(crate) budget: Budget,
    /// The largest body any one request may buffer: the whole budget.
    pub(crate) max_body_cap: usize,
    /// `upstream.timeout`: the app's answer, head and body, must arrive within it.
    pub(crate) upstream_timeout: Duration,
    /// Records older idemgates stored for credentialed requests in the shared scope.
    pub(crate) legacy: LegacyScope,
    /// Exchanges run on tasks of their own (they outlive a client that goes away); the drain
    /// waits for them, so a graceful stop never leaves an answered key uncommitted.
    pub(crate) exchanges: TaskTracker,
    /// Wakes the async delivery worker when an event is queued.
    pub(crate) deliveries: crate::delivery::Wakeup,
}

/// The routes serving now, with their metric handles resolved once.
pub struct Routes {
    pub router: Router,
    /// Per route, by `Route::index`; the last entry is for requests on no route ("-").
    metrics: Vec<RouteMetrics>,
    /// Every route's `forward_key_header`. The app trusts these to carry a key idemgate
    /// extracted, so a client's copy never reaches it on a request idemgate does not protect.
    forward_key_headers: Vec<http::HeaderName>,
}

impl Routes {
    fn new(router: Router, metrics: &Metrics) -> Routes {
        let names = router.routes().iter().map(|r| (&*r.name, r.shadow())).chain([("-", false)]);
        let metrics = names.map(|(name, shadow)| metrics.route(name, shadow)).collect();
        let mut forward_key_headers: Vec<_> = router.routes().iter().map(|r| r.forward_key_header.clone()).collect();
        forward_key_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        forward_key_headers.dedup();
        Routes { router, metrics, forward_key_headers }
    }

    pub fn metrics(&self, route_index: Option<usize>) -> &RouteMetrics {
        let unrouted = self.metrics.len() - 1;
        &self.metrics[route_index.unwrap_or(unrouted)]
    }

    /// Removes client-supplied copies of the headers that carry idemgate's extracted key.
    pub fn strip_forged_keys(&self, headers: &mut http::HeaderMap) {
        for name in &self.forward_key_headers {
            headers.remove(name);
        }
    }
}

/// What [`Gate::new`] takes besides the routes and the records.
pub struct GateOptions<'a> {
    pub server: &'a ServerConfig,
    pub key_logging: KeyLogging,
    pub upstream_timeout: Duration,
    pub legacy: LegacyScope,
}

impl Gate {
    pub fn new(router: Router, records: Records, metrics: Arc<Metrics>, options: GateOptions<'_>) -> Gate {
        let max_buffered = usize::try_from(options.server.max_buffered_bytes.0).unwrap_or(usize::MAX);
        let budget = Budget::new(max_buffered, metrics.buffered_bytes.clone(), metrics.budget_refusals.clone());
        Gate {
            routes: ArcSwap::from_pointee(Routes::new(router, &metrics)),
            records,
            waiters: Waiters::new(metrics.wait_keys.clone()),
            tokens: Tokens::default(),
            key_logging: options.key_logging,
            body_read_timeout: options.server.body_read_timeout.0,
            budget,
            max_body_cap: max_buffered,
            upstream_timeout: options.upstream_timeout,
            legacy: options.legacy,
            exchanges: TaskTracker::new(),
            deliveries: crate::delivery::Wakeup::default(),
            metrics,
        }
    }

    /// The routes serving now.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// Serves `router` from the next request on; requests in flight finish on the routes they
    /// started with.
    pub fn swap_routes(&self, router: Router) {
        self.routes.store(Arc::new(Routes::new(router, &self.metrics)));
    }

    /// Waits (up to `grace`) for exchanges still running after their connections closed.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.exchanges.close();
        tokio::time::timeout(grace, self.exchanges.wait()).await.is_ok()
    }
}

/// Claim tokens: never repeated within a process and not guessable from outside, so a stale
/// owner cannot complete or release a claim that another request took over.
pub(crate) struct Tokens {
    seed: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens { seed: random_u64(), counter: Default::default() }
    }
}

/// A value no other process (nor this one, asked again) is likely to get: the random keys std
/// draws for each hasher, without a dependency on a random number crate. For seeds and tokens,
/// not for secrets.
pub fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

impl Tokens {
    /// splitmix64 of a counter: a bijection, so distinct counters give distinct tokens.
    pub(crate) fn next(&self) -> u64 {
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut z = n.wrapping_add(self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
