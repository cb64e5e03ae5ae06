//! The request's journey, one named call per stage:
//!
//! ```text
//! route ─► read body ─► verify ─► identify ─► fingerprint ─► claim ─┬─ replay ──────────────────► respond
//!                                                                   ├─ mismatch (422) / 409 ───► respond
//!                                                                   ├─ wait (concurrent: wait) ► claim again
//!                                                                   └─ forward ─► capture ─► commit ─► respond
//! ```
//!
//! Unmatched requests skip everything after `route` and are streamed to the app untouched.

use crate::budget::{Budget, Reservation};
use crate::config::{Concurrent, KeyLogging, MissingKey};
use crate::decide::{Decision, decide};
use crate::error::{Body, Problem};
use crate::fingerprint::Fingerprint;
use crate::key::{KeyError, RequestView};
use crate::metrics::{Metrics, Outcome, RouteMetrics};
use crate::replay::{self, Captured};
use crate::route::{Route, RouteMatch, Router};
use crate::scope::{self, LegacyScope};
use crate::store::{Claim, Completed, RecordId, Records, StoreError, now_ms};
use crate::upstream::Upstream;
use crate::verify::SignedRequest;
use crate::waiters::{Backoff, Held, Waiters};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing::field::Empty;

/// Shared by every connection: the routes, the store, the app client.
pub struct Pipeline {
    /// Swapped whole by a config reload; each request works with the set it started with.
    routes: ArcSwap<Routes>,
    pub records: Records,
    upstream: Upstream,
    waiters: Waiters,
    metrics: Arc<Metrics>,
    tokens: Tokens,
    key_logging: KeyLogging,
    /// `server.body_read_timeout`.
    body_read_timeout: std::time::Duration,
    /// `server.max_buffered_bytes`, shared by every request.
    budget: Budget,
    /// Records older idemgates stored for credentialed requests in the shared scope.
    legacy: LegacyScope,
    /// Exchanges run on tasks of their own (they outlive a client that goes away); the drain
    /// waits for them, so a graceful stop never leaves an answered key uncommitted.
    exchanges: TaskTracker,
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
        let names = router.routes().iter().map(|r| &*r.name).chain(["-"]);
        let metrics = names.map(|name| metrics.route(name)).collect();
        let mut forward_key_headers: Vec<_> = router.routes().iter().map(|r| r.forward_key_header.clone()).collect();
        forward_key_headers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        forward_key_headers.dedup();
        Routes { router, metrics, forward_key_headers }
    }

    /// Removes client-supplied copies of the headers that carry idemgate's extracted key.
    fn strip_forged_keys(&self, headers: &mut http::HeaderMap) {
        for name in &self.forward_key_headers {
            headers.remove(name);
        }
    }

    fn metrics(&self, route_index: Option<usize>) -> &RouteMetrics {
        let unrouted = self.metrics.len() - 1;
        &self.metrics[route_index.unwrap_or(unrouted)]
    }
}

/// A key this request owns: what `forward`, `capture` and `commit` work with.
struct Claimed {
    route: Arc<Route>,
    id: RecordId,
    token: u64,
    fingerprint: Option<Fingerprint>,
    /// When the claim was made: the record's creation time.
    claimed_ms: i64,
    /// Wakes the key's waiters when the claim is done with (after `commit`).
    _held: Held,
}

/// What the request log line and the metrics say about one request.
struct Report {
    route: Arc<str>,
    route_index: Option<usize>,
    key: Option<String>,
    outcome: Outcome,
    /// The W3C trace id from the client's `traceparent`, to find the request in the app's traces.
    trace_id: Option<String>,
    /// The claim took over a key whose previous claim's lease ended unfinished.
    took_over: bool,
}

impl Report {
    /// The request's one log line; a failure of idemgate's own (5xx) at warn, with its cause.
    fn log(
        &self,
        keys: KeyLogging,
        method: &http::Method,
        status: http::StatusCode,
        elapsed: std::time::Duration,
        error: Option<&str>,
    ) {
        let key = self.key.as_deref().and_then(|k| match keys {
            KeyLogging::Shown => Some(k.to_string()),
            KeyLogging::Hashed => Some(hex(&Sha256::digest(k.as_bytes())[..8])),
            KeyLogging::Hidden => None,
        });
        let (route, key, outcome, trace_id) =
            (&*self.route, key.as_deref(), self.outcome.as_str(), self.trace_id.as_deref());
        let (status, duration_ms) = (status.as_u16(), elapsed.as_secs_f64() * 1000.0);
        // Only present when true: a takeover is rare and worth finding.
        let took_over = self.took_over.then_some(true);
        if status >= 500 && error.is_some() {
            tracing::warn!(route, key, outcome, %method, status, duration_ms, trace_id, took_over, error, "request");
        } else if self.took_over {
            tracing::warn!(route, key, outcome, %method, status, duration_ms, trace_id, took_over, error, "request");
        } else {
            tracing::info!(route, key, outcome, %method, status, duration_ms, trace_id, error, "request");
        }
    }
}

type Answer = Result<Response<Body>, Problem>;

impl Pipeline {
    pub fn new(
        router: Router,
        records: Records,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        key_logging: KeyLogging,
        server: &crate::config::ServerConfig,
        legacy: LegacyScope,
    ) -> Pipeline {
        let body_read_timeout = server.body_read_timeout.0;
        let budget = Budget::new(
            usize::try_from(server.max_buffered_bytes.0).unwrap_or(usize::MAX),
            metrics.buffered_bytes.clone(),
            metrics.budget_refusals.clone(),
        );
        Pipeline {
            routes: ArcSwap::from_pointee(Routes::new(router, &metrics)),
            records,
            upstream,
            waiters: Waiters::new(metrics.wait_keys.clone()),
            metrics,
            tokens: Tokens::default(),
            key_logging,
            body_read_timeout,
            budget,
            legacy,
            exchanges: TaskTracker::new(),
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

    /// Entry point for every request on the proxy listener. Logs one line and counts one outcome.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        // Debug level: spans exist only when traces are exported (the `otel` feature).
        let span = tracing::debug_span!("request", route = Empty, outcome = Empty, status = Empty);
        crate::telemetry::continue_trace(&span, req.headers());
        let response = self.handle_in(req, client, &span).instrument(span.clone()).await;
        span.record("status", response.status().as_u16());
        response
    }

    async fn handle_in(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
        span: &tracing::Span,
    ) -> Response<Body> {
        let start = Instant::now();
        let method = req.method().clone();
        let trace_id = trace_id(req.headers());
        let mut report = Report {
            route: "-".into(),
            route_index: None,
            key: None,
            outcome: Outcome::passthrough,
            trace_id,
            took_over: false,
        };
        let routes = self.routes.load_full();
        let answer = match route(&routes.router, &req) {
            Err(problem) => Err(problem),
            Ok(RouteMatch::Unmatched) if routes.router.rejects_unmatched() => Err(Problem::NoRoute),
            Ok(RouteMatch::Unmatched) => {
                let mut req = req;
                routes.strip_forged_keys(req.headers_mut());
                self.pass_through(req, client).await
            }
            Ok(RouteMatch::Matched(route)) => {
                report.route = route.name.clone();
                report.route_index = Some(route.index);
                self.clone().protect(route, &routes, req, client, &mut report).await
            }
        };
        let (response, error) = match answer {
            Ok(response) => (response, None),
            Err(problem) => {
                if matches!(problem, Problem::OverBudget(_)) {
                    self.budget.refused();
                }
                report.outcome = problem.outcome();
                let error = problem.to_string();
                (problem.into_response(), Some(error))
            }
        };
        let elapsed = start.elapsed();
        let metrics = routes.metrics(report.route_index);
        metrics.record(report.outcome, elapsed.as_secs_f64());
        if report.took_over {
            metrics.lease_expired();
        }
        if error.is_none() && matches!(report.outcome, Outcome::forwarded | Outcome::passthrough) {
            metrics.app_answered(response.status());
        }
        span.record("route", &*report.route).record("outcome", report.outcome.as_str());
        report.log(self.key_logging, &method, response.status(), elapsed, error.as_deref());
        response
    }

    /// A matched route: everything between `route` and `respond`.
    async fn protect(
        self: Arc<Self>,
        route: Arc<Route>,
        routes: &Routes,
        req: Request<Incoming>,
        client: SocketAddr,
        report: &mut Report,
    ) -> Answer {
        // A tunnel would carry requests idemgate never sees, past the route's protection.
        if req.headers().contains_key(header::UPGRADE) || req.method() == http::Method::CONNECT {
            return Err(Problem::UpgradeRefused);
        }
        let (mut parts, body) = req.into_parts();
        let mut memory = self.budget.reservation();
        let body = read_body(&parts, body, route.policy.max_body.0, self.body_read_timeout, &mut memory).await?;
        verify(&route, &parts, &body)?;
        let Some(id) = identify(&route, &parts, &body)? else {
            report.outcome = Outcome::passthrough;
            routes.strip_forged_keys(&mut parts.headers);
            return self.forward_unprotected(parts, body, client).await;
        };
        report.key = Some(id.key.clone());
        let fingerprint = fingerprint(&route, &parts, &body)?;
        let deadline = Instant::now() + route.policy.wait_timeout.0;
        let mut backoff = Backoff::default();
        loop {
            // Subscribed before the claim, so a wake between the claim and the wait is not lost.
            let waiting = (route.policy.concurrent == Concurrent::Wait).then(|| self.waiters.subscribe(&id));
            let claimed_ms = now_ms();
            match self.claim(&route, &id, fingerprint, claimed_ms).instrument(tracing::debug_span!("claim")).await? {
                Decision::Replay(done) => {
                    report.outcome = Outcome::replayed;
                    tracing::debug!(target: crate::telemetry::SPAN_EVENTS, "replay");
                    return Ok(replay::replay(&done.response));
                }
                Decision::Mismatch => return Err(Problem::Mismatch),
                Decision::InFlight { expires_ms } => {
                    let Some(waiting) = waiting else {
                        return Err(Problem::in_flight(expires_ms, now_ms()));
                    };
                    if !self.waiters.wait(waiting, deadline, expires_ms, &mut backoff).await {
                        return Err(Problem::in_flight(expires_ms, now_ms()));
                    }
                }
                Decision::Forward { token, .. } if let Some(legacy) = self.legacy(&route, &id, fingerprint).await? => {
                    // Completed by an older idemgate for this client: the claim is not needed.
                    if let Err(e) = self.records.release(&id, token).await {
                        tracing::warn!(route = %route.name, key = %id.key, error = %e, "release failed; the key is blocked until its lease ends");
                    }
                    match legacy {
                        Decision::Replay(done) => {
                            report.outcome = Outcome::replayed;
                            return Ok(replay::replay(&done.response));
                        }
                        _ => return Err(Problem::Mismatch),
                    }
                }
                Decision::Forward { token, took_over } => {
                    drop(waiting);
                    report.outcome = Outcome::forwarded;
                    report.took_over = took_over;
                    // The exchange runs on its own task: if the client goes away mid-flight, the
                    // app's answer is still committed, so the provider's retry gets the replay.
                    let held = self.waiters.hold(&id);
                    let claimed = Claimed { route, id, token, fingerprint, claimed_ms, _held: held };
                    let exchange = self.clone().exchange(claimed, parts, body, memory, client);
                    return self
                        .exchanges
                        .spawn(exchange.in_current_span())
                        .await
                        .unwrap_or_else(|e| Err(Problem::Internal(e.to_string())));
                }
            }
        }
    }

    /// A credentialed request's key first seen in its own scope may have been completed by an
    /// idemgate from before credential scopes, in the shared scope ([`crate::scope`]).
    async fn legacy(
        &self,
        route: &Route,
        id: &RecordId,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Option<Decision>, Problem> {
        let now = now_ms();
        if !scope::is_credential_scope(&id.scope) || !self.legacy.may_hold(now, route.policy.ttl.0.as_millis() as i64) {
            return Ok(None);
        }
        let Some(done) = self.legacy.find(&self.records, id, now).await? else { return Ok(None) };
        Ok(Some(decide(crate::store::ClaimOutcome::Completed(done), fingerprint)))
    }

    /// Waits (up to `grace`) for exchanges still running after their connections closed.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.exchanges.close();
        tokio::time::timeout(grace, self.exchanges.wait()).await.is_ok()
    }

    /// Stage `claim`: the cache, then the store; the pure [`decide`] turns what was found into what to do.
    async fn claim(
        &self,
        route: &Route,
        id: &RecordId,
        fingerprint: Option<Fingerprint>,
        now_ms: i64,
    ) -> Result<Decision, Problem> {
        let claim = Claim {
            id: id.clone(),
            token: self.tokens.next(),
            fingerprint,
            now_ms,
            lease_ms: route.policy.lease.0.as_millis() as i64,
        };
        let started = Instant::now();
        let outcome = self.records.claim(claim).await?;
        let decision = decide(outcome, fingerprint);
        if let Decision::Forward { token, .. } = decision {
            self.check_lease_left(route, id, token, started.elapsed()).await?;
        }
        Ok(decision)
    }

    /// A claim's lease runs from the time it was asked for, so a claim that waited long for the
    /// store (a lock, a stalled disk) holds the key for less. Forwarded, the app could outlast it
    /// and a duplicate would be forwarded beside it: unless the lease left covers
    /// `upstream.timeout`, the claim is given back and the request answered 503 instead.
    async fn check_lease_left(
        &self,
        route: &Route,
        id: &RecordId,
        token: u64,
        waited: std::time::Duration,
    ) -> Result<(), Problem> {
        let lease = route.policy.lease.0;
        if waited + self.upstream.timeout < lease {
            return Ok(());
        }
        if let Err(e) = self.records.release(id, token).await {
            tracing::warn!(route = %route.name, key = %id.key, error = %e, "release failed; the key is blocked until its lease ends");
        }
        Err(Problem::Store(crate::store::StoreError::Unavailable(format!(
            "the claim took {waited:?} to be recorded, which leaves less of its {lease:?} lease than upstream.timeout"
        ))))
    }

    /// Stages `forward`, `capture` and `commit` for a claimed key.
    async fn exchange(
        self: Arc<Self>,
        claimed: Claimed,
        parts: Parts,
        body: Bytes,
        memory: Reservation,
        client: SocketAddr,
    ) -> Answer {
        self.metrics.inflight_claims.inc();
        let result = self
            .forward_and_capture(&claimed, parts, body, memory, client)
            .instrument(tracing::debug_span!("forward"))
            .await;
        let answer = self.commit(&claimed, result).instrument(tracing::debug_span!("commit")).await;
        self.metrics.inflight_claims.dec();
        // The outcome is durable: the key's waiters may claim again.
        drop(claimed);
        answer
    }

    /// Stage `forward` then `capture`: the app's response with its body read up to the limit.
    async fn forward_and_capture(
        &self,
        claimed: &Claimed,
        parts: Parts,
        body: Bytes,
        memory: Reservation,
        client: SocketAddr,
    ) -> Result<Captured, Problem> {
        let route = &claimed.route;
        let mut req = Request::from_parts(parts, replay::full(body));
        self.upstream.prepare(&mut req, client)?;
        // After `prepare` has removed hop-by-hop headers: a client's `Connection: x-idempotency-key`
        // must not strip the key the app relies on. Visible ASCII (checked in `identify`), so valid.
        let key = HeaderValue::from_str(&claimed.id.key).map_err(|_| KeyError::NotVisible("key".into()))?;
        req.headers_mut().insert(route.forward_key_header.clone(), key);
        let start = Instant::now();
        let deadline = start + self.upstream.timeout;
        let response = self.upstream.send(req, deadline).await;
        self.metrics.upstream_seconds.observe(start.elapsed().as_secs_f64());
        // The request body has gone to the app: its bytes are free for the response.
        drop(memory);
        let memory = self.budget.reservation();
        replay::capture(response?, route.policy.max_response_body.0, deadline, self.upstream.timeout, memory).await
    }

    /// Stage `commit`: a status in `store_status` completes the key, durably, before the response
    /// leaves; anything else (including no response at all) releases it for the next delivery.
    async fn commit(&self, claimed: &Claimed, result: Result<Captured, Problem>) -> Answer {
        let Claimed { route, id, token, fingerprint, claimed_ms, .. } = claimed;
        let captured = match result {
            Ok(c) if route.store_status.contains(c.status) => c,
            other => {
                if let Err(e) = self.records.release(id, *token).await {
                    tracing::warn!(route = %route.name, key = %id.key, error = %e, "release failed; the key is blocked until its lease ends");
                }
                return other.map(Captured::into_response);
            }
        };
        let now = now_ms();
        let completed = Completed {
            fingerprint: *fingerprint,
            response: captured.to_stored(),
            // The record was created by the claim; the stores keep that time, and so must the cache.
            created_ms: *claimed_ms,
            expires_ms: now.saturating_add(route.policy.ttl.0.as_millis() as i64),
        };
        if !self.complete_within_lease(claimed, completed).await? {
            // Our lease ended and another request took the key (or an operator deleted it).
            self.metrics.lost_claims.inc();
            tracing::warn!(route = %route.name, key = %id.key, "the claim was lost before completion; the response is not stored");
        }
        Ok(captured.into_response())
    }

    /// Writes the completion, again and again with backoff while the store refuses it (a lock,
    /// a brief outage) and the claim's lease still covers another try: the app has done its
    /// work, and a 503 now would leave the key to be forwarded a second time once the lease ends.
    async fn complete_within_lease(&self, claimed: &Claimed, completed: Completed) -> Result<bool, StoreError> {
        let lease_end_ms = claimed.claimed_ms.saturating_add(claimed.route.policy.lease.0.as_millis() as i64);
        let mut backoff = COMPLETE_RETRY_FIRST;
        loop {
            match self.records.complete(&claimed.id, claimed.token, completed.clone()).await {
                Ok(stored) => return Ok(stored),
                Err(e) if now_ms() + (backoff + COMPLETE_RETRY_MARGIN).as_millis() as i64 >= lease_end_ms => {
                    return Err(e);
                }
                Err(e) => {
                    self.metrics.completion_retries.inc();
                    tracing::warn!(route = %claimed.route.name, key = %claimed.id.key, error = %e, retry_in = ?backoff, "completion not stored; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(COMPLETE_RETRY_MAX);
                }
            }
        }
    }

    /// `missing_key: forward`: the body was read already, so it is sent on as read.
    async fn forward_unprotected(&self, parts: Parts, body: Bytes, client: SocketAddr) -> Answer {
        self.send_to_app(Request::from_parts(parts, replay::full(body)), client).await
    }

    /// No route matched: the request goes to the app as it is, streamed both ways.
    async fn pass_through(&self, req: Request<Incoming>, client: SocketAddr) -> Answer {
        self.send_to_app(req.map(replay::incoming), client).await
    }

    async fn send_to_app(&self, mut req: Request<Body>, client: SocketAddr) -> Answer {
        self.upstream.prepare(&mut req, client)?;
        let deadline = Instant::now() + self.upstream.timeout;
        self.upstream.send(req, deadline).await.map(replay::stream)
    }
}

/// What hyper accepts but a proxy must not pass on, for every request, routed or not: an HTTP/1.1
/// request without exactly one Host (RFC 9112 3.2), a body chunked twice, or a transfer coding
/// other than chunked (idemgate would drop the coding and hand the app coded bytes as content).
/// Stage `route`, after the framing checks every request gets.
fn route(router: &Router, req: &Request<Incoming>) -> Result<RouteMatch, Problem> {
    check_framing(req)?;
    Ok(router.route(req.method(), req.uri().path())?)
}

fn check_framing(req: &Request<Incoming>) -> Result<(), Problem> {
    // HTTP/1.0 may omit Host, but never carry two: the app and idemgate could each pick another.
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (req.version() == http::Version::HTTP_11 && hosts != 1) {
        return Err(Problem::BadRequest(format!(
            "a request carries one Host header (HTTP/1.0: at most one), not {hosts}"
        )));
    }
    let mut chunked = 0;
    for coding in
        req.headers().get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','))
    {
        let coding = String::from_utf8_lossy(coding).trim().to_ascii_lowercase();
        match coding.as_str() {
            "chunked" => chunked += 1,
            "" => {}
            other => return Err(Problem::UnsupportedTransferCoding(other.to_string())),
        }
    }
    if chunked > 1 {
        return Err(Problem::BadRequest("the body is chunked more than once".into()));
    }
    Ok(())
}

/// Stage `read body`: all of it, within `limit` bytes and `within` time, every byte reserved in
/// `memory` first. A declared length over the limit (or over what the budget has free) is refused
/// unread. A client that trickles its body would otherwise hold its connection, and its place
/// among `max_connections`, forever.
async fn read_body(
    parts: &Parts,
    body: Incoming,
    limit: u64,
    within: std::time::Duration,
    memory: &mut Reservation,
) -> Result<Bytes, Problem> {
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Problem::BodyTooLarge(limit));
    }
    let declared = declared.map_or(0, |n| n as usize);
    tokio::time::timeout(within, collect_within(body, limit as usize, declared, memory))
        .await
        .map_err(|_| Problem::BodyTimeout(within))?
}

/// Reads `body` into one buffer (no second copy), growing the reservation chunk by chunk. Past
/// the budget, the rest is read and dropped: the sender then gets its 503 (a refusal before the
/// body is read would reach it as a broken connection, mid-upload).
async fn collect_within(
    mut body: Incoming,
    limit: usize,
    declared: usize,
    memory: &mut Reservation,
) -> Result<Bytes, Problem> {
    let mut over = memory.grow_to(declared).err();
    let mut buf = bytes::BytesMut::with_capacity(if over.is_some() { 0 } else { declared });
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Problem::BodyUnreadable(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        read += data.len();
        if read > limit {
            return Err(Problem::BodyTooLarge(limit as u64));
        }
        if over.is_none() {
            over = memory.grow_to(read).err();
        }
        match over {
            None => buf.extend_from_slice(&data),
            Some(_) => buf.clear(),
        }
    }
    match over {
        Some(over) => Err(over.into()),
        None => Ok(buf.freeze()),
    }
}

/// Stage `verify`: a request that does not carry its provider's signature claims nothing, so a
/// forged delivery cannot occupy the key of a real one.
fn verify(route: &Route, parts: &Parts, body: &Bytes) -> Result<(), Problem> {
    let Some(verifier) = &route.verifier else { return Ok(()) };
    let now_unix = now_ms() / 1000;
    let req = SignedRequest { method: &parts.method, uri: &parts.uri, headers: &parts.headers, body, now_unix };
    Ok(verifier.verify(&req)?)
}

/// Stage `identify`: the key and the scope. `None` when the key is missing and the route
/// forwards such requests unprotected.
fn identify(route: &Route, parts: &Parts, body: &Bytes) -> Result<Option<RecordId>, Problem> {
    let view = RequestView::new(&parts.headers, parts.uri.query(), body);
    let key = match route.key.extract(&view, route.policy.max_key_length)? {
        Some(key) => key,
        None if route.policy.missing_key == MissingKey::Forward => return Ok(None),
        None => return Err(KeyError::Missing(route.key.describe()).into()),
    };
    let scope = match &route.scope {
        None if route.credentials_scoped => scope::of_credentials(&parts.headers),
        None => scope::SHARED.to_string(),
        Some(scope) => {
            let value =
                scope.extract_scope(&view, SCOPE_MAX)?.ok_or_else(|| Problem::MissingScope(scope.describe()))?;
            // Scopes are often credentials (Authorization): only a digest is kept.
            hex(&Sha256::digest(value.as_bytes()))
        }
    };
    Ok(Some(RecordId { route: route.name.clone(), scope, key }))
}

/// Completion retries: the first after this, each later one twice as late, up to the max; none
/// that could not finish (a store operation may take seconds) before the claim's lease ends.
const COMPLETE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(25);
const COMPLETE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);
const COMPLETE_RETRY_MARGIN: std::time::Duration = std::time::Duration::from_secs(6);

/// Scope values are hashed, so their length costs nothing in the store; this only bounds work.
const SCOPE_MAX: usize = 8192;

/// Stage `fingerprint`.
fn fingerprint(route: &Route, parts: &Parts, body: &Bytes) -> Result<Option<Fingerprint>, Problem> {
    let view = RequestView::new(&parts.headers, parts.uri.query(), body);
    Ok(route.fingerprint.compute(&view)?)
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else none.
fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex_of = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex_of(version, 2) && version != "ff" && hex_of(trace, 32) && hex_of(parent, 16) && hex_of(flags, 2);
    (valid && trace.bytes().any(|b| b != b'0')).then(|| trace.to_string())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Claim tokens: never repeated within a process and not guessable from outside, so a stale
/// owner cannot complete or release a claim that another request took over.
struct Tokens {
    seed: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl Default for Tokens {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Tokens { seed, counter: Default::default() }
    }
}

impl Tokens {
    /// splitmix64 of a counter: a bijection, so distinct counters give distinct tokens.
    fn next(&self) -> u64 {
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut z = n.wrapping_add(self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
