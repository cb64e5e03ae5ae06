//! Async delivery (`delivery: { mode: async }`): the worker that takes acknowledged events from
//! the store's inbox and delivers them to the app, with retries and dead letters.
//!
//! One supervisor task serves every async route of the routes serving now (a reload can add,
//! change or remove one). For each route it leases as many due events as the route's
//! `concurrency` leaves room for, and runs each attempt on a task of its own:
//!
//! ```text
//! take_due ─► attempt: rebuild the request ─► call the app ─┬─ status in store_status ─► completed
//!                                                           ├─ attempts or max_age spent ─► dead
//!                                                           └─ otherwise ─► retry after backoff
//! ```
//!
//! The supervisor wakes when an event is queued or an attempt ends (either can make an event
//! due), and otherwise every `POLL` to pick up retries whose time has come and events leased by a
//! replica that died. Nothing lives only in memory: an event is in the store from its
//! acknowledgement until its row expires, and a delivery interrupted by a crash is leased again.

use crate::config::BackoffConfig;
use crate::error::Problem;
use crate::gate::{Gate, random_u64};
use crate::metrics::{AttemptResult, QueueMetrics};
use crate::route::Route;
use crate::stack::Upstream;
use crate::store::queue::{Attempted, QueuedEvent};
use crate::store::{StoredResponse, now_ms};
use http::{HeaderValue, Request};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How often the supervisor looks for due events without being woken.
const POLL: Duration = Duration::from_millis(250);
/// How often each route's queue gauges are read from the store.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// The request header that tells the app which attempt this is (1 for the first).
pub const ATTEMPT_HEADER: &str = "idempotency-attempt";

/// Wakes the supervisor: an event was queued, or an attempt ended.
#[derive(Default)]
pub struct Wakeup(Notify);

impl Wakeup {
    pub fn wake(&self) {
        // A stored permit: a wake while the supervisor is busy is not lost.
        self.0.notify_one();
    }
}

/// One async route's state in the supervisor.
struct RouteQueue {
    /// One permit per call to the app at once (`delivery.concurrency`).
    slots: Arc<Semaphore>,
    concurrency: usize,
    metrics: QueueMetrics,
    gauges_read: Option<tokio::time::Instant>,
}

/// Runs the supervisor until `stopped`; then lets attempts in flight finish within `grace` and
/// logs, at error level, what is left queued per route.
pub async fn run(gate: Arc<Gate>, app: Upstream, mut stopped: watch::Receiver<bool>, grace: Duration) {
    let attempts = TaskTracker::new();
    let mut queues: HashMap<Arc<str>, RouteQueue> = HashMap::new();
    loop {
        let routes = gate.routes();
        for route in routes.router.routes().iter().filter(|r| r.is_async()) {
            let queue = queues.entry(route.name.clone()).or_insert_with(|| RouteQueue::new(&gate, route));
            queue.follow(&gate, route);
            let leased = lease_due(&gate, route, queue).await;
            for (event, token, slot) in leased {
                let (gate, app, route, metrics) = (gate.clone(), app.clone(), route.clone(), queue.metrics.clone());
                attempts.spawn(async move {
                    attempt(&gate, app, &route, &metrics, event, token).await;
                    drop(slot);
                    gate.deliveries.wake();
                });
            }
            queue.read_gauges(&gate, route).await;
        }
        tokio::select! {
            () = gate.deliveries.0.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    attempts.close();
    if tokio::time::timeout(grace, attempts.wait()).await.is_err() {
        tracing::warn!(
            in_flight = attempts.len(),
            "deliveries still running after the shutdown grace; they will be delivered again"
        );
    }
    report_left(&gate).await;
}

impl RouteQueue {
    fn new(gate: &Gate, route: &Route) -> RouteQueue {
        let concurrency = route.policy.delivery.concurrency;
        RouteQueue {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            metrics: gate.metrics.queue(&route.name),
            gauges_read: None,
        }
    }

    /// A reload changed the route's concurrency: new slots from now on (attempts in flight keep
    /// theirs until they end).
    fn follow(&mut self, gate: &Gate, route: &Route) {
        if route.policy.delivery.concurrency != self.concurrency {
            *self = RouteQueue { gauges_read: self.gauges_read, ..RouteQueue::new(gate, route) };
        }
    }

    async fn read_gauges(&mut self, gate: &Gate, route: &Route) {
        let now = tokio::time::Instant::now();
        if self.gauges_read.is_some_and(|at| now < at + GAUGES_EVERY) {
            return;
        }
        self.gauges_read = Some(now);
        match gate.records.backend().queue_stats(&route.name).await {
            Ok(stats) => {
                self.metrics.depth.set(stats.depth as i64);
                self.metrics.dead_letters.set(stats.dead as i64);
                let age_ms = stats.oldest_ms.map_or(0, |oldest| now_ms().saturating_sub(oldest).max(0));
                self.metrics.oldest_age_seconds.set(age_ms as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(route = %route.name, error = %e, "reading the delivery queue's size failed"),
        }
    }
}

/// Leases as many due events as the route has free slots, each with the slot it will use.
async fn lease_due(
    gate: &Gate,
    route: &Route,
    queue: &RouteQueue,
) -> Vec<(QueuedEvent, u64, tokio::sync::OwnedSemaphorePermit)> {
    let free = queue.slots.available_permits();
    if free == 0 {
        return Vec::new();
    }
    let token = gate.tokens.next();
    let lease_ms = route.policy.lease.0.as_millis() as i64;
    let events = match gate.records.backend().take_due(&route.name, now_ms(), free, token, lease_ms).await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(route = %route.name, error = %e, "leasing due events failed; trying again shortly");
            return Vec::new();
        }
    };
    events
        .into_iter()
        .filter_map(|event| {
            // `free` permits were available and only this task takes them.
            let slot = queue.slots.clone().try_acquire_owned().ok()?;
            Some((event, token, slot))
        })
        .collect()
}

/// One delivery of `event` to the app, and what the store records of it.
async fn attempt(gate: &Gate, app: Upstream, route: &Route, metrics: &QueueMetrics, event: QueuedEvent, token: u64) {
    let delivery = &route.policy.delivery;
    let n = event.attempts;
    let max_age_ms = delivery.max_age.0.as_millis() as i64;
    let outcome = if now_ms().saturating_sub(event.first_seen_ms) >= max_age_ms {
        // It waited past max_age (the app was down, or this was leased late): not delivered.
        Failure { status: None, error: Some("max_age passed before this attempt".into()), retry_after: None }
            .into_attempted(route, &event, true)
    } else {
        match call(gate, app, route, &event).await {
            Ok(response) if route.store_status.contains(response.status_code()) => Attempted::Completed(response),
            Ok(response) => {
                let retry_after = retry_after(&response);
                let failure = Failure { status: Some(response.status), error: None, retry_after };
                failure.into_attempted(route, &event, false)
            }
            Err(problem) => Failure { status: None, error: Some(problem.to_string()), retry_after: None }
                .into_attempted(route, &event, false),
        }
    };
    let (result, status, error) = match &outcome {
        Attempted::Completed(response) => (AttemptResult::ok, Some(response.status), None),
        Attempted::Retry { status, error, .. } => (AttemptResult::retry, *status, error.clone()),
        Attempted::Dead { status, error } => (AttemptResult::dead, *status, error.clone()),
    };
    metrics.attempt(result);
    let result_name = result.as_str();
    if result == AttemptResult::dead {
        tracing::warn!(route = %route.name, key = %event.id.key, attempt = n, result = result_name, status, error, "delivery: dead letter");
    } else {
        tracing::info!(route = %route.name, key = %event.id.key, attempt = n, result = result_name, status, error, "delivery");
    }
    match gate.records.backend().finish_attempt(event.id.clone(), token, outcome).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(route = %route.name, key = %event.id.key, attempt = n, "the delivery's lease ended before it finished; it is delivered again");
        }
        Err(e) => {
            tracing::warn!(route = %route.name, key = %event.id.key, attempt = n, error = %e, "recording the delivery failed; it is delivered again once its lease ends");
        }
    }
}

/// An attempt that did not complete the event.
struct Failure {
    status: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Failure {
    /// Dead once attempts or max_age are spent (or `expired` says so), else a retry after backoff.
    fn into_attempted(self, route: &Route, event: &QueuedEvent, expired: bool) -> Attempted {
        let delivery = &route.policy.delivery;
        let now = now_ms();
        let spent = event.attempts >= delivery.attempts;
        let max_age_end = event.first_seen_ms.saturating_add(delivery.max_age.0.as_millis() as i64);
        if expired || spent || now >= max_age_end {
            return Attempted::Dead { status: self.status, error: self.error };
        }
        let wait = backoff(event.attempts, &delivery.backoff, self.retry_after, unit_random());
        Attempted::Retry {
            next_attempt_ms: now.saturating_add(wait.as_millis() as i64),
            status: self.status,
            error: self.error,
        }
    }
}

/// The wait after the `failed`-th failed attempt: uniformly random in
/// `[0, min(max, initial * 2^(failed-1))]` (`unit` is the uniform draw in `[0, 1)`), or the app's
/// `Retry-After` when that is longer.
pub fn backoff(failed: u32, cfg: &BackoffConfig, retry_after: Option<Duration>, unit: f64) -> Duration {
    let doublings = failed.saturating_sub(1).min(63);
    let ceiling = cfg.initial.0.checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX)).unwrap_or(cfg.max.0);
    let jittered = ceiling.min(cfg.max.0).mul_f64(unit.clamp(0.0, 1.0));
    match retry_after {
        Some(asked) if asked > jittered => asked,
        _ => jittered,
    }
}

/// A uniform draw in `[0, 1)`.
fn unit_random() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` of a 429 or 503, in seconds or as an HTTP date.
fn retry_after(response: &StoredResponse) -> Option<Duration> {
    if !matches!(response.status, 429 | 503) {
        return None;
    }
    let value = response.headers.iter().find(|(n, _)| n == http::header::RETRY_AFTER)?.1.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = crate::version::Version::parse(value)?.unix_ms()?;
    Some(Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64))
}

/// The event's request as it arrived, plus the key and the attempt number; the app's answer
/// with its body read up to `max_response_body`.
async fn call(gate: &Gate, app: Upstream, route: &Route, event: &QueuedEvent) -> Result<StoredResponse, Problem> {
    let stored = &event.request;
    let mut req = Request::builder().method(stored.method.as_str()).uri(stored.target.as_str());
    let headers = req.headers_mut().ok_or_else(|| Problem::Internal("a stored request is malformed".into()))?;
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    let key = HeaderValue::from_str(&event.id.key)
        .map_err(|_| Problem::Internal("a stored key is not a header value".into()))?;
    headers.insert(route.forward_key_header.clone(), key);
    headers.insert(ATTEMPT_HEADER, HeaderValue::from(event.attempts));
    let req = req
        .body(crate::replay::full(stored.body.clone()))
        .map_err(|e| Problem::Internal(format!("a stored request is malformed: {e}")))?;
    let timeout = gate.upstream_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    // Boxed as a `Send` future here, where the compiler can prove it (not inside the spawn).
    let call: crate::error::SendFuture<_> = Box::pin(app.oneshot(req));
    let response = call.await?;
    let memory = gate.budget.reservation();
    let captured =
        crate::replay::capture(response, route.policy.max_response_body.0, deadline, timeout, memory).await?;
    Ok(captured.to_stored())
}

/// At shutdown: what stays queued, per route, at error level (it is delivered after the
/// restart, but only if the store outlives the pod).
async fn report_left(gate: &Gate) {
    let routes = gate.routes();
    for route in routes.router.routes().iter().filter(|r| r.is_async()) {
        match gate.records.backend().queue_stats(&route.name).await {
            Ok(stats) if stats.depth > 0 => {
                tracing::error!(route = %route.name, queued = stats.depth, "stopping with events not yet delivered; they are delivered after the restart if the store is kept");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(route = %route.name, error = %e, "could not count the events left queued"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cfg(initial_ms: u64, max_ms: u64) -> BackoffConfig {
        BackoffConfig { initial: Dur(Duration::from_millis(initial_ms)), max: Dur(Duration::from_millis(max_ms)) }
    }

    #[test]
    fn the_ceiling_doubles_per_failure_up_to_max() {
        let c = cfg(1000, 600_000);
        let ceiling = |n| backoff(n, &c, None, 1.0);
        assert_eq!(ceiling(1), Duration::from_secs(1));
        assert_eq!(ceiling(2), Duration::from_secs(2));
        assert_eq!(ceiling(5), Duration::from_secs(16));
        assert_eq!(ceiling(10), Duration::from_secs(512));
        assert_eq!(ceiling(11), Duration::from_secs(600), "capped at max");
        assert_eq!(ceiling(200), Duration::from_secs(600), "no overflow");
    }

    #[test]
    fn the_wait_is_uniform_between_zero_and_the_ceiling() {
        let c = cfg(1000, 600_000);
        assert_eq!(backoff(3, &c, None, 0.0), Duration::ZERO);
        assert_eq!(backoff(3, &c, None, 0.5), Duration::from_secs(2));
        for _ in 0..1000 {
            let wait = backoff(4, &c, None, unit_random());
            assert!(wait <= Duration::from_secs(8), "{wait:?}");
        }
        let draws: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "uniform draws average about 0.5: {mean}");
    }

    #[test]
    fn a_longer_retry_after_is_the_wait() {
        let c = cfg(1000, 600_000);
        assert_eq!(backoff(1, &c, Some(Duration::from_secs(30)), 1.0), Duration::from_secs(30));
        assert_eq!(backoff(6, &c, Some(Duration::from_secs(1)), 1.0), Duration::from_secs(32), "a shorter one is not");
    }

    #[test]
    fn retry_after_is_read_from_429_and_503_only() {
        let response = |status, value: &str| StoredResponse {
            status,
            headers: vec![(http::header::RETRY_AFTER, HeaderValue::from_str(value).unwrap())],
            body: bytes::Bytes::new(),
            body_omitted: false,
        };
        assert_eq!(retry_after(&response(429, "120")), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&response(503, " 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&response(500, "120")), None);
        assert_eq!(retry_after(&response(429, "soon")), None);
        assert_eq!(retry_after(&response(503, "Sun, 06 Nov 1994 08:49:37 GMT")), Some(Duration::ZERO), "a past date");
    }
}
