//! Shadow mode (`mode: shadow` on a route): the app gets every request as it arrived, and
//! idemgate does everything else as if it enforced, to show what enforcing would do.
//!
//! ```text
//! read body ─► verify ─► identify ─► fingerprint ─► claim ─┬─ Owned ─► forward ─► capture ─► commit
//!     │           │          │             │               └─ Replay / Mismatch / InFlight ─┐
//!     └───────────┴──────────┴─────────────┴─ (enforcing would refuse) ────────────────────┴─► forward as it arrived
//! ```
//!
//! The request is forwarded exactly as an unmatched one (no `forward_key_header`, a client's
//! copy of it stripped); the app's answer goes back unchanged. A first-seen key is claimed and
//! its response stored as on an enforcing route, so the store is warm when the route switches to
//! `enforce`. `idemgate_shadow_total{would}` counts what enforcing would have done, and every
//! request enforcing would not have forwarded is logged with its reason.

use super::lease::Claimed;
use super::stage::{Exchange, Head, Stage, fingerprint, identify};
use crate::error::{Body, BoxError, Problem, SendFuture};
use crate::layer::body::{Read, read_or_spill};
use crate::layer::report::{Facts, logged_key};
use crate::layer::route::Matched;
use crate::metrics::{Outcome, Would};
use crate::route::Route;
use bytes::Bytes;
use futures_util::future::Either;
use http::request::Parts;
use http::{Request, Response, header};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Sends the requests of shadow routes down the shadow path, the rest to the enforcing stages.
pub struct ShadowLayer<S> {
    stage: Stage<S>,
}

impl<S> ShadowLayer<S> {
    pub(super) fn new(stage: Stage<S>) -> ShadowLayer<S> {
        ShadowLayer { stage }
    }
}

impl<S, E> Layer<E> for ShadowLayer<S> {
    type Service = ShadowService<E, S>;
    fn layer(&self, enforcing: E) -> ShadowService<E, S> {
        ShadowService { enforcing, stage: self.stage.clone() }
    }
}

pub struct ShadowService<E, S> {
    enforcing: E,
    stage: Stage<S>,
}

impl<E: Clone, S> Clone for ShadowService<E, S> {
    fn clone(&self) -> Self {
        ShadowService { enforcing: self.enforcing.clone(), stage: self.stage.clone() }
    }
}

impl<B, E, S, RB> Service<Request<B>> for ShadowService<E, S>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Service<Request<B>, Response = Response<Body>, Error = Problem> + Clone + Send + 'static,
    E::Future: Send,
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    RB: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Problem;
    /// The enforcing stages' own future, or the shadow path's.
    type Future = Either<E::Future, SendFuture<Result<Response<Body>, Problem>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Problem>> {
        // The shadow path is always ready; the enforcing stages say for themselves.
        self.enforcing.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match req.extensions().get::<Matched>().map(|m| &m.route).filter(|route| route.shadow()).cloned() {
            Some(route) => Either::Right(Box::pin(shadow(self.stage.clone(), route, req))),
            // Ready (polled above) and called in place: an enforcing request, nearly every
            // request, costs no clone of the stages and no second box.
            None => Either::Left(self.enforcing.call(req)),
        }
    }
}

/// What enforcing would have done with a request, as far as the shadow path needs to know.
enum Verdict {
    /// First seen: claimed, to be forwarded and completed as on an enforcing route.
    Owned(Exchange),
    /// Anything else enforcing would do; `reason` when it would not have forwarded.
    Would { would: Would, reason: Option<String> },
    /// The store could not say (unavailable, busy): enforcing would have answered 503.
    Unknown(Problem),
}

async fn shadow<S, RB, B>(stage: Stage<S>, route: Arc<Route>, req: Request<B>) -> Result<Response<Body>, Problem>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    RB: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let gate = stage.gate().clone();
    let (mut parts, body) = req.into_parts();
    let facts = parts.extensions.get::<Matched>().map(|m| m.facts.clone());
    let report = Report { facts: facts.as_ref(), route: &route, gate: &gate };
    report.outcome();
    gate.routes().strip_forged_keys(&mut parts.headers);
    if parts.headers.contains_key(header::UPGRADE) || parts.method == http::Method::CONNECT {
        report.would(Would::rejected, None, Some(Problem::UpgradeRefused.to_string()));
        return forward(&stage, parts, crate::replay::boxed(body)).await;
    }
    let memory = gate.budget.reservation();
    let (body, memory) =
        match read_or_spill(&parts, body, route.policy.max_body.0, gate.body_read_timeout, memory).await? {
            Read::Whole(body, memory) => (body, memory),
            Read::Spilled(body, why) => {
                report.would(Would::rejected, None, Some(why.to_string()));
                return forward(&stage, parts, body).await;
            }
        };
    let (verdict, key) = evaluate(&stage, &route, &parts, &body).await;
    if let (Some(key), Some(facts)) = (&key, &facts) {
        facts.key(key.clone());
    }
    match verdict {
        Verdict::Owned(exchange) => {
            report.would(Would::forwarded, None, None);
            Matched::keep_reserved(&mut parts.extensions, memory);
            stage.detached_exchange(exchange, parts, body).await
        }
        Verdict::Would { would, reason } => {
            report.would(would, key.as_deref(), reason);
            let answer = forward(&stage, parts, crate::replay::full(body)).await;
            drop(memory);
            answer
        }
        Verdict::Unknown(problem) => {
            tracing::warn!(route = %route.name, error = %problem, "shadow: the store could not say what enforcing would do; forwarded");
            forward(&stage, parts, crate::replay::full(body)).await
        }
    }
}

/// Verify, identify, fingerprint and claim, as the enforcing stages would, without answering.
/// Also returns the key, once known.
async fn evaluate<S, RB>(stage: &Stage<S>, route: &Arc<Route>, parts: &Parts, body: &Bytes) -> (Verdict, Option<String>)
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    RB: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let refused = |would, problem: Problem| Verdict::Would { would, reason: Some(problem.to_string()) };
    if let Err(problem) = crate::layer::verify::check(route, &parts.method, &parts.uri, &parts.headers, body) {
        return (refused(Would::unverified, problem), None);
    }
    let id = match identify(route, Head::of(parts), body) {
        Ok(Some(id)) => id,
        // `missing_key: forward`: enforcing would forward it unprotected too.
        Ok(None) => return (Verdict::Would { would: Would::forwarded, reason: None }, None),
        Err(problem) => return (refused(Would::rejected, problem), None),
    };
    let key = Some(id.key.clone());
    let fingerprint = match fingerprint(route, Head::of(parts), body) {
        Ok(fingerprint) => fingerprint,
        Err(problem) => return (refused(Would::rejected, problem), key),
    };
    let verdict = match stage.claim(route, &id, fingerprint, true).await {
        Ok(Claimed::Owned(lease)) => {
            Verdict::Owned(Exchange { route: route.clone(), lease, fingerprint, forward_key: false })
        }
        Ok(Claimed::Replay(_)) => Verdict::Would { would: Would::replayed, reason: Some("completed key".into()) },
        Ok(Claimed::Mismatch) => refused(Would::mismatch, Problem::Mismatch),
        Ok(Claimed::InFlight { .. }) => Verdict::Would { would: Would::conflict, reason: Some("key in flight".into()) },
        Err(problem) => Verdict::Unknown(problem),
    };
    (verdict, key)
}

/// To the app as an unmatched request goes: as it arrived, the answer streamed back unchanged.
async fn forward<S, RB>(stage: &Stage<S>, parts: Parts, body: Body) -> Result<Response<Body>, Problem>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    RB: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let response = stage.call_app(Request::from_parts(parts, body)).await?;
    Ok(crate::replay::stream(response))
}

/// The request's outcome (`shadow`), its `would` count, and the log line of a request enforcing
/// would not have forwarded.
struct Report<'a> {
    facts: Option<&'a Facts>,
    route: &'a Route,
    gate: &'a crate::gate::Gate,
}

impl Report<'_> {
    fn outcome(&self) {
        if let Some(facts) = self.facts {
            facts.outcome(Outcome::shadow);
        }
    }

    fn would(&self, would: Would, key: Option<&str>, reason: Option<String>) {
        if let Some(facts) = self.facts {
            facts.would(would);
        }
        if let Some(reason) = reason {
            let key = key.and_then(|k| logged_key(self.gate.key_logging, k));
            tracing::info!(route = %self.route.name, key = key.as_deref(), would = would.as_str(), reason, "shadow: enforcing would not forward this request");
        }
    }
}
