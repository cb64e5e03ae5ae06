//! The idempotency stage, in the order a request meets it:
//!
//! ```text
//! identify ─► (async route: accept, see [`super::accept`])
//!          ─► fingerprint ─► claim ─┬─ Replay ───────────────────────────► respond (replayed)
//!                                   ├─ Mismatch (422) / InFlight (409) ─► respond
//!                                   ├─ InFlight, concurrent: wait ──────► wait, claim again
//!                                   └─ Owned(lease) ─► forward ─► capture ─► commit ─► respond
//! ```
//!
//! A request whose route forwards keyless requests (`missing_key: forward`) goes to the service
//! behind as it is. An owned key's claim and exchange are [`detached`]: a sender that hangs up
//! does not cancel the app call, and its retry gets the stored response.

use super::detach::detached;
use super::lease::{Claimed, Lease};
use super::stale;
use crate::config::{Concurrent, MissingKey, StaleAction};
use crate::decide::{Decision, decide};
use crate::error::{Body, BoxError, Problem, SendFuture};
use crate::fingerprint::Fingerprint;
use crate::gate::{Gate, hex};
use crate::key::{KeyError, RequestView};
use crate::layer::report::Facts;
use crate::layer::route::Matched;
use crate::metrics::Outcome;
use crate::replay::{self, Captured};
use crate::route::Route;
use crate::scope;
use crate::store::{Claim, ClaimOutcome, Completed, RecordId, StoreError, StoredResponse, now_ms};
use crate::upstream::strip_hop_by_hop;
use crate::waiters::Backoff;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, header};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

#[derive(Clone)]
pub struct StageLayer {
    gate: Arc<Gate>,
}

impl StageLayer {
    pub fn new(gate: Arc<Gate>) -> StageLayer {
        StageLayer { gate }
    }
}

impl<S> Layer<S> for StageLayer {
    type Service = Stage<S>;
    fn layer(&self, app: S) -> Stage<S> {
        Stage { gate: self.gate.clone(), app: Arc::new(app) }
    }
}

/// The stage around `app`: the service that does the work a key stands for. Shared: the stage is
/// cloned for every request and every task, but `app` is cloned only to be called (a replay never
/// clones it).
pub struct Stage<S> {
    gate: Arc<Gate>,
    app: Arc<S>,
}

impl<S> Stage<S> {
    pub(super) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl<S> Clone for Stage<S> {
    fn clone(&self) -> Self {
        Stage { gate: self.gate.clone(), app: self.app.clone() }
    }
}

impl<S, RB> Service<Request<Bytes>> for Stage<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    RB: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Problem;
    /// A replay from the cache is ready at once, and gets no box.
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response<Body>, Problem>>,
        Pin<Box<dyn Future<Output = Result<Response<Body>, Problem>> + Send>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Problem>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        use futures_util::future::Either;
        match self.look_in_cache(&req) {
            FromCache::Answer(answer) => Either::Left(std::future::ready(answer)),
            FromCache::Miss(identified) => Either::Right(Box::pin(self.clone().run(req, identified))),
        }
    }
}

/// What the cache says of a request before the stage's future is made.
enum FromCache {
    /// A duplicate of a completed key: its replay (or 422).
    Answer(Result<Response<Body>, Problem>),
    /// Not in the cache. Its key and fingerprint, when they could be taken here (a sync route,
    /// a key present and valid), so that `run` does not take them again (a JSON key or
    /// fingerprint would be parsed twice); otherwise `run` does, errors and all.
    Miss(Option<(RecordId, Option<Fingerprint>)>),
}

impl<S> Stage<S> {
    /// A duplicate of a key completed and still in the cache, answered at once: what [`Stage::run`]
    /// would answer, without its future (a kilobyte and a half to allocate and copy) or a clone of
    /// the stage.
    fn look_in_cache(&self, req: &Request<Bytes>) -> FromCache {
        let Some(matched) = req.extensions().get::<Matched>().filter(|m| !m.route.is_async()) else {
            return FromCache::Miss(None);
        };
        let route = &matched.route;
        let head = Head::of_request(req);
        let Ok(Some(id)) = identify(route, head, req.body()) else { return FromCache::Miss(None) };
        let Ok(fingerprint) = fingerprint(route, head, req.body()) else { return FromCache::Miss(None) };
        let Some(done) = self.gate.records.cached(&id, now_ms()) else {
            return FromCache::Miss(Some((id, fingerprint)));
        };
        let answer = match completed(done, fingerprint) {
            Claimed::Replay(done) => Ok(replayed(Some(&matched.facts), &done)),
            _ => Err(Problem::Mismatch),
        };
        // Moved, not copied: the id is done with.
        matched.facts.key(id.key);
        FromCache::Answer(answer)
    }
}

/// What an owned key's exchange works with.
pub(super) struct Exchange {
    pub(super) route: Arc<Route>,
    /// Boxed, as the claim gave it: every future of the exchange carries the exchange, some of
    /// them twice (an async fn keeps its arguments beside its locals), and each is copied in.
    pub(super) lease: Box<Lease>,
    pub(super) fingerprint: Option<Fingerprint>,
    /// The app gets the key in `forward_key_header` (not in shadow mode, which forwards the
    /// request as it arrived).
    pub(super) forward_key: bool,
}

impl<S, RB> Stage<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    RB: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    /// `identified`: the key and fingerprint [`Stage::look_in_cache`] took, if it could.
    async fn run(
        self,
        req: Request<Bytes>,
        identified: Option<(RecordId, Option<Fingerprint>)>,
    ) -> Result<Response<Body>, Problem> {
        let (mut parts, body) = req.into_parts();
        let matched = parts.extensions.get::<Matched>().ok_or(Problem::Internal("no route".into()))?;
        let (route, facts) = (matched.route.clone(), Some(matched.facts.clone()));
        let note = |f: &dyn Fn(&Facts)| facts.iter().for_each(f);
        // A key `look_in_cache` identified has just missed the cache: its first claim goes
        // straight to the store. After a wait, the key may have completed: the cache first.
        let mut cache_first = identified.is_none();
        let (id, fingerprint) = match identified {
            Some((id, fingerprint)) => {
                note(&|f| f.key(id.key.clone()));
                (id, fingerprint)
            }
            None => {
                let Some(id) = identify(&route, Head::of(&parts), &body)? else {
                    note(&|f| f.outcome(Outcome::passthrough));
                    self.gate.routes().strip_forged_keys(&mut parts.headers);
                    let response = self.call_app(Request::from_parts(parts, replay::full(body))).await?;
                    return Ok(replay::stream(response));
                };
                note(&|f| f.key(id.key.clone()));
                if route.is_async() {
                    return super::accept::accept(&self.gate, &route, id, parts, body, facts.as_ref()).await;
                }
                let fingerprint = fingerprint(&route, Head::of(&parts), &body)?;
                (id, fingerprint)
            }
        };
        let deadline = Instant::now() + route.policy.wait_timeout.0;
        let mut backoff = Backoff::default();
        loop {
            // Subscribed before the claim, so a wake between the claim and the wait is not lost.
            let waiting = (route.policy.concurrent == Concurrent::Wait).then(|| self.gate.waiters.subscribe(&id));
            let claimed =
                self.claim(&route, &id, fingerprint, cache_first).instrument(tracing::debug_span!("claim")).await?;
            cache_first = true;
            match claimed {
                Claimed::Replay(done) => return Ok(replayed(facts.as_ref(), &done)),
                Claimed::Mismatch => return Err(Problem::Mismatch),
                Claimed::InFlight { expires_ms } => {
                    let Some(waiting) = waiting else {
                        return Err(Problem::in_flight(expires_ms, now_ms()));
                    };
                    if !self.gate.waiters.wait(waiting, deadline, expires_ms, &mut backoff).await {
                        return Err(Problem::in_flight(expires_ms, now_ms()));
                    }
                }
                Claimed::Owned(lease) => {
                    drop(waiting);
                    note(&|f| f.outcome(Outcome::forwarded));
                    if lease.took_over {
                        note(&|f| f.took_over());
                    }
                    let exchange = Exchange { route, lease, fingerprint, forward_key: true };
                    return self.detached_exchange(exchange, parts, body).await;
                }
            }
        }
    }

    /// Stage `claim`: the cache (unless the caller has just looked), then the store; the pure
    /// [`decide`] turns what was found into what to do, and an owned key becomes a [`Lease`].
    pub(super) async fn claim(
        &self,
        route: &Arc<Route>,
        id: &RecordId,
        fingerprint: Option<Fingerprint>,
        cache_first: bool,
    ) -> Result<Claimed, Problem> {
        if let Some(done) = cache_first.then(|| self.gate.records.cached(id, now_ms())).flatten() {
            return Ok(completed(done, fingerprint));
        }
        // Detached: a sender that hangs up while the store records the claim drops this
        // request, but not the claim, which still becomes a Lease; dropped unended, the Lease
        // gives the key back. Cancelled with the request, a claim the store recorded would hold
        // the key for its whole lease with no one to forward it.
        let (stage, route, id) = (self.clone(), route.clone(), id.clone());
        let claim = async move { stage.claim_in_store(&route, &id, fingerprint).await };
        detached(claim, &self.gate.exchanges).await.unwrap_or_else(|_| Err(panicked("the claim")))
    }

    async fn claim_in_store(
        &self,
        route: &Route,
        id: &RecordId,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Claimed, Problem> {
        let gate = &self.gate;
        let claimed_ms = now_ms();
        let claim = Claim {
            id: id.clone(),
            token: gate.tokens.next(),
            fingerprint,
            now_ms: claimed_ms,
            lease_ms: route.policy.lease.0.as_millis() as i64,
        };
        let started = Instant::now();
        let (token, took_over) = match decide(gate.records.claim_in_store(claim).await?, fingerprint) {
            Decision::Replay(done) => return Ok(Claimed::Replay(done)),
            Decision::Mismatch => return Ok(Claimed::Mismatch),
            Decision::InFlight { expires_ms } => return Ok(Claimed::InFlight { expires_ms }),
            Decision::Forward { token, took_over } => (token, took_over),
        };
        // Only a route that waits has duplicates to wake. (A reload that makes it wait meanwhile
        // leaves its new waiters polling this key, as for a key held by another replica.)
        let held = (route.policy.concurrent == Concurrent::Wait).then(|| gate.waiters.hold(id));
        let lease = Lease::new(gate.records.clone(), id.clone(), token, claimed_ms, took_over, held);
        if let Some(legacy) = self.legacy(route, id, fingerprint).await? {
            // Completed by an older idemgate for this client: the claim is not needed.
            lease.release().await;
            return Ok(legacy);
        }
        self.check_lease_left(route, lease, started.elapsed()).await.map(|lease| Claimed::Owned(Box::new(lease)))
    }

    /// A credentialed request's key first seen in its own scope may have been completed by an
    /// idemgate from before credential scopes, in the shared scope ([`crate::scope`]).
    async fn legacy(
        &self,
        route: &Route,
        id: &RecordId,
        fingerprint: Option<Fingerprint>,
    ) -> Result<Option<Claimed>, Problem> {
        let now = now_ms();
        let legacy = &self.gate.legacy;
        if !scope::is_credential_scope(&id.scope) || !legacy.may_hold(now, route.policy.ttl.0.as_millis() as i64) {
            return Ok(None);
        }
        let Some(done) = legacy.find(&self.gate.records, id, now).await? else { return Ok(None) };
        Ok(Some(completed(done, fingerprint)))
    }

    /// A claim's lease runs from the time it was asked for, so a claim that waited long for the
    /// store (a lock, a stalled disk) holds the key for less. Forwarded, the app could outlast it
    /// and a duplicate would be forwarded beside it: unless the lease left covers
    /// `upstream.timeout`, the claim is given back and the request answered 503 instead.
    async fn check_lease_left(&self, route: &Route, lease: Lease, waited: Duration) -> Result<Lease, Problem> {
        let full = route.policy.lease.0;
        if waited + self.gate.upstream_timeout < full {
            return Ok(lease);
        }
        lease.release().await;
        Err(Problem::Store(StoreError::Unavailable(format!(
            "the claim took {waited:?} to be recorded, which leaves less of its {full:?} lease than upstream.timeout"
        ))))
    }

    /// The exchange of an owned key, detached from its request (see the module's comment).
    pub(super) async fn detached_exchange(
        &self,
        exchange: Exchange,
        parts: Parts,
        body: Bytes,
    ) -> Result<Response<Body>, Problem> {
        detached(self.clone().exchange(exchange, parts, body), &self.gate.exchanges)
            .await
            .unwrap_or_else(|_| Err(panicked("the exchange with the app")))
    }

    /// Stages `stale` (on guarded routes), `forward`, `capture` and `commit` for an owned key.
    async fn exchange(self, exchange: Exchange, parts: Parts, body: Bytes) -> Result<Response<Body>, Problem> {
        let metrics = &self.gate.metrics;
        metrics.inflight_claims.inc();
        let answer = self.guarded_exchange(exchange, parts, body).await;
        metrics.inflight_claims.dec();
        answer
    }

    /// The exchange, holding the delivery's entity when the route has a stale guard.
    async fn guarded_exchange(&self, exchange: Exchange, parts: Parts, body: Bytes) -> Result<Response<Body>, Problem> {
        // Shadow mode forwards everything: it has nothing to guard.
        let named = match (&exchange.route.stale, exchange.forward_key) {
            (Some(guard), true) => stale::identify(guard, &parts, &body, &exchange.lease.id),
            _ => None,
        };
        if let Some((entity, version)) = named {
            // Boxed: the guard's states are kilobytes that every other exchange would carry.
            return Box::pin(self.stale_guarded(exchange, parts, body, entity, version)).await;
        }
        let captured =
            self.forward_and_capture(&exchange, parts, body, false).instrument(tracing::debug_span!("forward")).await;
        self.commit(exchange, captured).instrument(tracing::debug_span!("commit")).await
    }

    /// The exchange of a delivery to a stale-guarded route: one delivery per entity at a time.
    async fn stale_guarded(
        &self,
        exchange: Exchange,
        parts: Parts,
        body: Bytes,
        entity: RecordId,
        version: crate::version::Version,
    ) -> Result<Response<Body>, Problem> {
        let route = exchange.route.clone();
        let entity = match stale::enter(&self.gate, &route, entity, version).await {
            Ok(entity) => entity,
            Err(problem) => {
                exchange.lease.release().await;
                return Err(problem);
            }
        };
        let stale = entity.stale();
        if stale {
            if let Some(matched) = parts.extensions.get::<Matched>() {
                matched.facts.outcome(Outcome::stale);
            }
            let newer = entity.newer.as_ref().map(ToString::to_string);
            tracing::info!(route = %route.name, entity = %entity.id.key, version = %entity.version, newer, "stale delivery");
        }
        let answer = if stale && route.stale.as_ref().is_some_and(|g| g.action == StaleAction::Ack) {
            self.ack_stale(exchange).await
        } else {
            let captured = self
                .forward_and_capture(&exchange, parts, body, stale)
                .instrument(tracing::debug_span!("forward"))
                .await;
            let completes = matches!(&captured, Ok(c) if route.store_status.contains(c.status));
            let answer = self.commit(exchange, captured).instrument(tracing::debug_span!("commit")).await;
            if completes && !stale && answer.is_ok() {
                entity.completed(&self.gate, &route).await;
            }
            answer
        };
        entity.leave().await;
        answer
    }

    /// `action: ack`: the key completes with a small acknowledgement, durably, as any response
    /// would, so a duplicate of the stale delivery is replayed the same answer.
    async fn ack_stale(&self, exchange: Exchange) -> Result<Response<Body>, Problem> {
        let Exchange { route, mut lease, fingerprint, .. } = exchange;
        let response = StoredResponse {
            status: 200,
            headers: vec![
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (HeaderName::from_static("idempotent-stale"), HeaderValue::from_static("true")),
            ],
            body: stale::ack_body(&lease.id.key),
            body_omitted: false,
        };
        let completed = Completed {
            fingerprint,
            response: response.clone(),
            created_ms: lease.claimed_ms,
            expires_ms: now_ms().saturating_add(route.policy.ttl.0.as_millis() as i64),
        };
        if let Err(e) = self.complete_within_lease(&route, &mut lease, completed).await {
            lease.release().await;
            return Err(e.into());
        }
        Ok(replay::respond(&response))
    }

    /// Stage `forward` then `capture`: the app's response with its body read up to the limit.
    async fn forward_and_capture(
        &self,
        exchange: &Exchange,
        mut parts: Parts,
        body: Bytes,
        flag_stale: bool,
    ) -> Result<Captured<RB>, Problem> {
        let route = &exchange.route;
        let memory = Matched::take_reserved(&mut parts.extensions);
        // Before the key goes in: a client's `Connection: x-idempotency-key` must not strip the
        // key the app relies on. Visible ASCII (checked in `identify`), so a valid value.
        strip_hop_by_hop(&mut parts.headers);
        if exchange.forward_key {
            let key = HeaderValue::from_str(&exchange.lease.id.key).map_err(|_| KeyError::NotVisible("key".into()))?;
            parts.headers.insert(route.forward_key_header.clone(), key);
        }
        if route.stale.is_some() {
            parts.headers.remove(stale::FLAG_HEADER);
            if flag_stale {
                parts.headers.insert(stale::FLAG_HEADER, HeaderValue::from_static("true"));
            }
        }
        let start = Instant::now();
        let deadline = start + self.gate.upstream_timeout;
        let response = self.call_app(Request::from_parts(parts, replay::full(body))).await;
        self.gate.metrics.upstream_seconds.observe(start.elapsed().as_secs_f64());
        // The request body has gone to the app: its bytes are free for the response.
        drop(memory);
        let memory = self.gate.budget.reservation();
        let timeout = self.gate.upstream_timeout;
        replay::capture(response?, route.policy.max_response_body.0, deadline, timeout, memory).await
    }

    pub(super) fn call_app(
        &self,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<RB>, Problem>> + Send + 'static + use<S, RB> {
        use futures_util::FutureExt;
        let timeout = self.gate.upstream_timeout;
        // Boxed here, where the compiler proves `S::Future: Send` from the bound; the answer's
        // error is mapped without a second box.
        let call: SendFuture<Result<Response<RB>, S::Error>> = Box::pin(S::clone(&self.app).oneshot(req));
        call.map(move |answer| answer.map_err(|e| Problem::from_app(e.into(), timeout)))
    }

    /// Stage `commit`: a status in `store_status` completes the key, durably, before the response
    /// leaves; anything else (no response at all included) releases it for the next delivery.
    async fn commit(
        &self,
        exchange: Exchange,
        captured: Result<Captured<RB>, Problem>,
    ) -> Result<Response<Body>, Problem> {
        let Exchange { route, mut lease, fingerprint, .. } = exchange;
        let captured = match captured {
            Ok(c) if route.store_status.contains(c.status) => c,
            other => {
                lease.release().await;
                return other.map(Captured::into_response);
            }
        };
        let completed = Completed {
            fingerprint,
            response: captured.to_stored(),
            // The record was created by the claim; the stores keep that time, and so must the cache.
            created_ms: lease.claimed_ms,
            expires_ms: now_ms().saturating_add(route.policy.ttl.0.as_millis() as i64),
        };
        let stored = match self.complete_within_lease(&route, &mut lease, completed).await {
            Ok(stored) => stored,
            Err(e) => {
                // The app did the work; a release would let the next delivery reach it at once.
                lease.abandon();
                return Err(e.into());
            }
        };
        if !stored {
            // Our lease ended and another request took the key (or an operator deleted it).
            self.gate.metrics.lost_claims.inc();
            tracing::warn!(route = %route.name, key = %lease.id.key, "the claim was lost before completion; the response is not stored");
        }
        Ok(captured.into_response())
    }

    /// Writes the completion, again and again with backoff while the store refuses it (a lock,
    /// a brief outage) and the claim's lease still covers another try: the app has done its
    /// work, and a 503 now would leave the key to be forwarded a second time once the lease ends.
    async fn complete_within_lease(
        &self,
        route: &Route,
        lease: &mut Lease,
        completed: Completed,
    ) -> Result<bool, StoreError> {
        let lease_end_ms = lease.claimed_ms.saturating_add(route.policy.lease.0.as_millis() as i64);
        let mut backoff = COMPLETE_RETRY_FIRST;
        // Shared by every try and by the cache: one copy for the store, none per try.
        let completed = Arc::new(completed);
        loop {
            match lease.complete(Arc::clone(&completed)).await {
                Ok(stored) => return Ok(stored),
                Err(e) if now_ms() + (backoff + COMPLETE_RETRY_MARGIN).as_millis() as i64 >= lease_end_ms => {
                    return Err(e);
                }
                Err(e) => {
                    self.gate.metrics.completion_retries.inc();
                    tracing::warn!(route = %route.name, key = %lease.id.key, error = %e, retry_in = ?backoff, "completion not stored; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(COMPLETE_RETRY_MAX);
                }
            }
        }
    }
}

/// What a completed record found by a claim means for this request: its replay, or 422.
fn completed(done: Arc<Completed>, fingerprint: Option<Fingerprint>) -> Claimed {
    match decide(ClaimOutcome::Completed(done), fingerprint) {
        Decision::Replay(done) => Claimed::Replay(done),
        _ => Claimed::Mismatch,
    }
}

/// A duplicate's answer: its stored response, counted as a replay.
fn replayed(facts: Option<&Facts>, done: &Completed) -> Response<Body> {
    facts.inspect(|f| f.outcome(Outcome::replayed));
    tracing::debug!(target: crate::telemetry::SPAN_EVENTS, "replay");
    replay::replay(&done.response)
}

fn panicked(what: &str) -> Problem {
    Problem::Internal(format!("{what} panicked"))
}

/// Completion retries: the first after this, each later one twice as late, up to the max; none
/// that could not finish (a store operation may take seconds) before the claim's lease ends.
const COMPLETE_RETRY_FIRST: Duration = Duration::from_millis(25);
const COMPLETE_RETRY_MAX: Duration = Duration::from_secs(1);
const COMPLETE_RETRY_MARGIN: Duration = Duration::from_secs(6);

/// What `identify` and `fingerprint` read of a request's head.
#[derive(Clone, Copy)]
pub(super) struct Head<'a> {
    headers: &'a http::HeaderMap,
    uri: &'a http::Uri,
}

impl<'a> Head<'a> {
    pub(super) fn of(parts: &'a Parts) -> Head<'a> {
        Head { headers: &parts.headers, uri: &parts.uri }
    }

    fn of_request<B>(req: &'a Request<B>) -> Head<'a> {
        Head { headers: req.headers(), uri: req.uri() }
    }
}

/// Stage `identify`: the key and the scope. `None` when the key is missing and the route
/// forwards such requests unprotected.
pub(super) fn identify(route: &Route, head: Head<'_>, body: &Bytes) -> Result<Option<RecordId>, Problem> {
    let view = RequestView::new(head.headers, head.uri.query(), body);
    let key = match route.key.extract(&view, route.policy.max_key_length)? {
        Some(key) => key,
        None if route.policy.missing_key == MissingKey::Forward => return Ok(None),
        None => return Err(KeyError::Missing(route.key.describe()).into()),
    };
    let scope = match &route.scope {
        None if route.credentials_scoped => scope::of_credentials(head.headers),
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

/// Scope values are hashed, so their length costs nothing in the store; this only bounds work.
const SCOPE_MAX: usize = 8192;

/// Stage `fingerprint`.
pub(super) fn fingerprint(route: &Route, head: Head<'_>, body: &Bytes) -> Result<Option<Fingerprint>, Problem> {
    let view = RequestView::new(head.headers, head.uri.query(), body);
    Ok(route.fingerprint.compute(&view)?)
}
