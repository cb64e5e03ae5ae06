//! Metric names and the registry the admin listener serves.
//!
//! Labels are bounded: route names (from the config), outcomes (a fixed set). Never keys, paths
//! or client addresses.

use crate::store::CompletedCache;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What happened to a request, as counted in `idemgate_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    forwarded,
    replayed,
    conflict,
    mismatch,
    rejected,
    passthrough,
    upstream_error,
    store_error,
    /// Refused by signature verification (401): claimed nothing, never reached the app.
    unverified,
    /// On a route in shadow mode: forwarded as it arrived, whatever enforcing would have done.
    shadow,
    /// An older version of an entity than one already completed (the stale guard).
    stale,
    /// On an async route: stored durably and acknowledged, to be delivered by a worker.
    queued,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::forwarded,
        Outcome::replayed,
        Outcome::conflict,
        Outcome::mismatch,
        Outcome::rejected,
        Outcome::passthrough,
        Outcome::upstream_error,
        Outcome::store_error,
        Outcome::unverified,
        Outcome::shadow,
        Outcome::stale,
        Outcome::queued,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::forwarded => "forwarded",
            Outcome::replayed => "replayed",
            Outcome::conflict => "conflict",
            Outcome::mismatch => "mismatch",
            Outcome::rejected => "rejected",
            Outcome::passthrough => "passthrough",
            Outcome::upstream_error => "upstream_error",
            Outcome::store_error => "store_error",
            Outcome::unverified => "unverified",
            Outcome::shadow => "shadow",
            Outcome::stale => "stale",
            Outcome::queued => "queued",
        }
    }
}

/// What enforcing would have done with a request on a shadow route, as counted in
/// `idemgate_shadow_total{would}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Would {
    forwarded,
    replayed,
    conflict,
    mismatch,
    rejected,
    unverified,
}

impl Would {
    pub const ALL: [Would; 6] =
        [Would::forwarded, Would::replayed, Would::conflict, Would::mismatch, Would::rejected, Would::unverified];

    pub fn as_str(self) -> &'static str {
        match self {
            Would::forwarded => "forwarded",
            Would::replayed => "replayed",
            Would::conflict => "conflict",
            Would::mismatch => "mismatch",
            Would::rejected => "rejected",
            Would::unverified => "unverified",
        }
    }
}

/// How a delivery attempt on an async route ended, as counted in
/// `idemgate_delivery_attempts_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptResult {
    /// It completed the event.
    ok,
    /// Another attempt follows.
    retry,
    /// It made a dead letter.
    dead,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::ok => "ok",
            AttemptResult::retry => "retry",
            AttemptResult::dead => "dead",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    pub route: String,
    pub result: AttemptResult,
}

/// One async route's queue series, resolved once.
#[derive(Clone)]
pub struct QueueMetrics {
    pub depth: Gauge,
    pub oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub dead_letters: Gauge,
    attempts: [Counter; 3],
}

impl QueueMetrics {
    pub fn attempt(&self, result: AttemptResult) {
        self.attempts[result as usize].inc();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShadowLabels {
    pub route: String,
    pub would: Would,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// One route's request counters (by outcome) and latency histogram.
#[derive(Clone)]
pub struct RouteMetrics {
    outcomes: [Counter; Outcome::ALL.len()],
    seconds: Histogram,
    /// The app's answers by status class, 1xx to 5xx.
    app_classes: [Counter; 5],
    lease_expiries: Counter,
    /// Shadow routes only: an enforcing route has no `idemgate_shadow_total` series.
    would: Option<[Counter; Would::ALL.len()]>,
}

impl RouteMetrics {
    /// A request on a shadow route that enforcing would have answered with `would`.
    pub fn would(&self, would: Would) {
        if let Some(counters) = &self.would {
            counters[would as usize].inc();
        }
    }

    /// Each `would` with its count since start (all 0 on an enforcing route).
    pub fn would_counts(&self) -> impl Iterator<Item = (Would, u64)> + '_ {
        Would::ALL.into_iter().map(|w| (w, self.would.as_ref().map_or(0, |counters| counters[w as usize].get())))
    }

    pub fn record(&self, outcome: Outcome, seconds: f64) {
        self.outcomes[outcome as usize].inc();
        self.seconds.observe(seconds);
    }

    /// An answer that came from the app just now (not a replay, not idemgate's own).
    pub fn app_answered(&self, status: http::StatusCode) {
        if let Some(counter) = self.app_classes.get((status.as_u16() / 100).wrapping_sub(1) as usize) {
            counter.inc();
        }
    }

    /// A claim took over a key whose previous claim's lease ended unfinished.
    pub fn lease_expired(&self) {
        self.lease_expiries.inc();
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabel {
    pub result: ReloadResult,
}

/// How a config reload ended, as counted in `idemgate_config_reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    /// The new routes serve from now on.
    applied,
    /// The new config was invalid; the running one stays.
    refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClassLabels {
    pub route: String,
    pub class: &'static str,
}
type OpHistogramFamily = Family<OpLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub app_responses: Family<ClassLabels, Counter>,
    pub request_seconds: HistogramFamily,
    pub upstream_seconds: Histogram,
    /// By operation: claim, complete, release, get, delete.
    pub store_seconds: OpHistogramFamily,
    pub inflight_claims: Gauge,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub swept: Counter,
    /// The in-memory tier's entries and bytes, read from it at each scrape.
    cache: Arc<CacheGauges>,
    pub store_records: Gauge,
    pub store_bytes: Gauge,
    pub store_wal_bytes: Gauge,
    /// A completion refused because the claim's lease had ended and another request took the key.
    pub lost_claims: Counter,
    /// Claims that took over a key after the previous claim's lease ended unfinished, by route.
    pub lease_expiries: Family<RouteLabel, Counter>,
    /// Requests on shadow routes by what enforcing would have done.
    pub shadow: Family<ShadowLabels, Counter>,
    queue_depth: Family<RouteLabel, Gauge>,
    queue_oldest_age: Family<RouteLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    delivery_attempts: Family<AttemptLabels, Counter>,
    dead_letters: Family<RouteLabel, Gauge>,
    pub config_reloads: Family<ReloadLabel, Counter>,
    /// Keys that a request of this process holds or waits for (`concurrent: wait`).
    pub wait_keys: Gauge,
    /// Request and response bodies held in memory now, all requests together.
    pub buffered_bytes: Gauge,
    /// Requests refused because `server.max_buffered_bytes` was reached.
    pub budget_refusals: Counter,
    /// Completions written again after the store refused them (locked, briefly unavailable).
    pub completion_retries: Counter,
}

fn latency_histogram() -> Histogram {
    // 50µs .. ~26s: replays are sub-millisecond, slow apps take seconds.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let app_responses = Family::<ClassLabels, Counter>::default();
        let request_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let upstream_seconds = latency_histogram();
        let store_seconds: OpHistogramFamily = Family::new_with_constructor(latency_histogram);
        let inflight_claims = Gauge::default();
        let (cache_hits, cache_misses, swept, lost_claims) = Default::default();
        let cache = Arc::new(CacheGauges::default());
        let (store_records, store_bytes, store_wal_bytes): (Gauge, Gauge, Gauge) = Default::default();
        let lease_expiries = Family::<RouteLabel, Counter>::default();
        let shadow = Family::<ShadowLabels, Counter>::default();
        let queue_depth = Family::<RouteLabel, Gauge>::default();
        let queue_oldest_age = Family::<RouteLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let delivery_attempts = Family::<AttemptLabels, Counter>::default();
        let dead_letters = Family::<RouteLabel, Gauge>::default();
        let config_reloads = Family::<ReloadLabel, Counter>::default();
        let (wait_keys, buffered_bytes, budget_refusals): (Gauge, Gauge, Counter) = Default::default();
        let completion_retries = Counter::default();
        for result in [ReloadResult::applied, ReloadResult::refused] {
            config_reloads.get_or_create_owned(&ReloadLabel { result });
        }
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("idemgate_requests", "Requests on the proxy listener by route and outcome", requests.clone());
        registry.register(
            "idemgate_app_responses",
            "The app's answers to forwarded and passed-through requests, by route and status class",
            app_responses.clone(),
        );
        registry.register(
            "idemgate_request_duration_seconds",
            "Time from request head to response head, by route",
            request_seconds.clone(),
        );
        registry.register(
            "idemgate_upstream_duration_seconds",
            "Time the app took to answer forwarded requests",
            upstream_seconds.clone(),
        );
        registry.register(
            "idemgate_store_duration_seconds",
            "Time each store operation took, queueing and syncing included, by operation",
            store_seconds.clone(),
        );
        registry.register(
            "idemgate_inflight_claims",
            "Claims held by this process while the app works",
            inflight_claims.clone(),
        );
        registry.register("idemgate_cache_hits", "Completed keys answered from memory", Counter::clone(&cache_hits));
        registry.register("idemgate_cache_misses", "Lookups that went to the store", Counter::clone(&cache_misses));
        registry.register("idemgate_swept_records", "Expired records deleted by the sweeper", Counter::clone(&swept));
        registry.register("idemgate_build_info", "The running idemgate's version", build_info);
        registry.register_collector(Box::new(cache.clone()));
        registry.register("idemgate_store_records", "Records in the store (SQLite)", store_records.clone());
        registry.register(
            "idemgate_store_bytes",
            "Store size on disk, write-ahead log included (SQLite)",
            store_bytes.clone(),
        );
        registry.register("idemgate_store_wal_bytes", "Write-ahead log size (SQLite)", store_wal_bytes.clone());
        registry.register(
            "idemgate_lost_claims",
            "Completions refused because the lease had ended and the key was taken over",
            Counter::clone(&lost_claims),
        );
        registry.register(
            "idemgate_lease_expiries",
            "Claims that took over a key whose previous claim's lease ended unfinished (a crash or stall): \
             the app may have seen that key twice",
            lease_expiries.clone(),
        );
        registry.register(
            "idemgate_shadow",
            "Requests on routes in shadow mode (all forwarded as they arrived) by what enforcing would have done",
            shadow.clone(),
        );
        registry.register(
            "idemgate_queue_depth",
            "Events of async routes waiting for delivery or being delivered (dead letters excluded)",
            queue_depth.clone(),
        );
        registry.register(
            "idemgate_queue_oldest_age_seconds",
            "Age of the oldest event of an async route waiting for delivery or being delivered; 0 when none",
            queue_oldest_age.clone(),
        );
        registry.register(
            "idemgate_delivery_attempts",
            "Deliveries to the app on async routes by result: ok (completed the event), retry (another attempt follows), dead (made a dead letter)",
            delivery_attempts.clone(),
        );
        registry.register(
            "idemgate_dead_letters",
            "Events of async routes that ran out of attempts or max_age, kept for an operator",
            dead_letters.clone(),
        );
        registry.register(
            "idemgate_config_reloads",
            "Config reloads (SIGHUP or a change of the file) by result: applied, or refused as invalid",
            config_reloads.clone(),
        );
        registry.register(
            "idemgate_wait_keys",
            "Keys a request of this process holds or waits for; 0 when nothing is in flight",
            wait_keys.clone(),
        );
        registry.register(
            "idemgate_buffered_bytes",
            "Request and response bodies held in memory now (bounded by server.max_buffered_bytes)",
            buffered_bytes.clone(),
        );
        registry.register(
            "idemgate_buffer_refusals",
            "Requests answered 503 because server.max_buffered_bytes was reached",
            Counter::clone(&budget_refusals),
        );
        registry.register(
            "idemgate_completion_retries",
            "Completions written again after the store refused them; the key stays claimed meanwhile",
            Counter::clone(&completion_retries),
        );
        Metrics {
            completion_retries,
            wait_keys,
            buffered_bytes,
            budget_refusals,
            registry,
            lease_expiries,
            shadow,
            queue_depth,
            queue_oldest_age,
            delivery_attempts,
            dead_letters,
            config_reloads,
            requests,
            app_responses,
            request_seconds,
            upstream_seconds,
            store_seconds,
            inflight_claims,
            cache_hits,
            cache_misses,
            swept,
            lost_claims,
            cache,
            store_records,
            store_bytes,
            store_wal_bytes,
        }
    }

    /// The route's series, resolved once: the request path then counts without label lookups,
    /// and every outcome's series exists (at 0) from the start.
    pub fn route(&self, route: &str, shadow: bool) -> RouteMetrics {
        let counter = |outcome| self.requests.get_or_create_owned(&RequestLabels { route: route.to_string(), outcome });
        let would = |would| self.shadow.get_or_create_owned(&ShadowLabels { route: route.to_string(), would });
        let class = |class| self.app_responses.get_or_create_owned(&ClassLabels { route: route.to_string(), class });
        RouteMetrics {
            outcomes: Outcome::ALL.map(counter),
            seconds: self.request_seconds.get_or_create_owned(&RouteLabel { route: route.to_string() }),
            app_classes: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            lease_expiries: self.lease_expiries.get_or_create_owned(&RouteLabel { route: route.to_string() }),
            would: shadow.then(|| Would::ALL.map(would)),
        }
    }

    /// The cache whose entries and bytes every scrape reports (0 until there is one).
    pub fn watch_cache(&self, cache: CompletedCache) {
        let _ = self.cache.0.set(cache);
    }

    /// An async route's queue series, created at 0.
    pub fn queue(&self, route: &str) -> QueueMetrics {
        let label = RouteLabel { route: route.to_string() };
        let attempt =
            |result| self.delivery_attempts.get_or_create_owned(&AttemptLabels { route: route.to_string(), result });
        QueueMetrics {
            depth: self.queue_depth.get_or_create_owned(&label),
            oldest_age_seconds: self.queue_oldest_age.get_or_create_owned(&label),
            dead_letters: self.dead_letters.get_or_create_owned(&label),
            attempts: [AttemptResult::ok, AttemptResult::retry, AttemptResult::dead].map(attempt),
        }
    }

    pub fn store_op(&self, op: &'static str) -> Histogram {
        self.store_seconds.get_or_create_owned(&OpLabel { op })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `idemgate_cache_entries` and `idemgate_cache_bytes`, read from the cache when scraped: counting
/// them per insert and eviction took an eviction listener, and with it a lock per key in moka.
#[derive(Default)]
struct CacheGauges(std::sync::OnceLock<CompletedCache>);

/// The `Collector` trait asks for it; the cache has nothing to show here.
impl std::fmt::Debug for CacheGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheGauges")
    }
}

impl prometheus_client::collector::Collector for CacheGauges {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.0.get().map(CompletedCache::usage).unwrap_or_default();
        for (name, help, value) in [
            ("idemgate_cache_entries", "Completed records held in memory", usage.entries),
            (
                "idemgate_cache_bytes",
                "Bytes of completed records held in memory, as counted against store.cache.max_bytes",
                usage.bytes,
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// A latency histogram that takes no lock. prometheus-client's `Histogram` takes a mutex for every
/// observation, and every request observes at least one (its duration; a first-seen key also the
/// app's and each store operation's), from every worker thread at once. Encoded exactly as
/// prometheus-client encodes its own (see the test).
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds, ascending; the last count, +Inf, has none.
    bounds: Box<[f64]>,
    counts: Box<[AtomicU64]>,
    /// In nanoseconds: an integer sum is one `fetch_add`, where an f64 would take a CAS loop.
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Histogram {
        let bounds: Box<[f64]> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(Buckets { bounds, counts, sum_nanos: AtomicU64::new(0) }))
    }

    pub fn observe(&self, seconds: f64) {
        let b = &self.0;
        // The first bucket whose bound is at least `seconds` (`le`); NaN counts in +Inf.
        let i = if seconds.is_nan() { b.bounds.len() } else { b.bounds.partition_point(|bound| *bound < seconds) };
        b.counts[i].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: a negative duration adds 0.
        b.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.0;
        let buckets: Vec<(f64, u64)> = (b.bounds.iter().copied().chain(std::iter::once(f64::INFINITY)))
            .zip(b.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count from the buckets read, so that it always equals the +Inf bucket.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = b.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    fn encoded(name: &str, metric: impl prometheus_client::registry::Metric) -> String {
        let mut registry = Registry::default();
        registry.register(name, "help", metric);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn observations_encode_as_prometheus_clients_own_histogram_does() {
        let ours = latency_histogram();
        let theirs = prometheus_client::metrics::histogram::Histogram::new(exponential_buckets(0.00005, 2.0, 20));
        // On a bound, between bounds, below the first, past the last, zero.
        for seconds in [0.00005, 0.0001, 0.00007, 0.000001, 0.25, 3.0, 1000.0, 0.0] {
            ours.observe(seconds);
            theirs.observe(seconds);
        }
        assert_eq!(encoded("latency", ours), encoded("latency", theirs));
    }
}
