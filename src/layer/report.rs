//! The request's span, its one log line and its metrics: tower-http's `TraceLayer`, told what
//! each stage found.
//!
//! The stages write what they learn (route, key, outcome, a lease takeover) into the request's
//! [`Facts`]; an answer idemgate gives itself carries its [`ProblemMark`]. When the response head
//! leaves, [`Report::on_response`] turns both into the `request` log line and the per-route
//! counters, exactly once per request.

use crate::config::KeyLogging;
use crate::gate::{Gate, Routes, hex};
use crate::metrics::{Outcome, Would};
use crate::telemetry::{RequestLine, write_request_line};
use http::{Method, Request, Response};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;

/// What the stages learned about one request, for its log line and counters.
#[derive(Clone)]
pub struct Facts(Arc<Mutex<Fact>>);

struct Fact {
    routes: Arc<Routes>,
    /// None until a route matched: logged as "-".
    route: Option<Arc<str>>,
    route_index: Option<usize>,
    key: Option<String>,
    outcome: Outcome,
    took_over: bool,
    method: Method,
    /// The W3C trace id from the client's `traceparent`, to find the request in the app's traces.
    trace_id: Option<String>,
}

impl Facts {
    pub fn new<B>(routes: Arc<Routes>, req: &Request<B>) -> Facts {
        Facts(Arc::new(Mutex::new(Fact {
            routes,
            route: None,
            route_index: None,
            key: None,
            outcome: Outcome::passthrough,
            took_over: false,
            method: req.method().clone(),
            trace_id: trace_id(req.headers()),
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fact) -> T) -> T {
        f(&mut crate::lock(&self.0))
    }

    pub fn route(&self, name: &Arc<str>, index: usize) {
        self.with(|f| (f.route, f.route_index) = (Some(name.clone()), Some(index)));
    }

    pub fn key(&self, key: String) {
        self.with(|f| f.key = Some(key));
    }

    pub fn outcome(&self, outcome: Outcome) {
        self.with(|f| f.outcome = outcome);
    }

    /// On a shadow route: what enforcing would have done (`idemgate_shadow_total`).
    pub fn would(&self, would: Would) {
        self.with(|f| f.routes.metrics(f.route_index).would(would));
    }

    pub fn took_over(&self) {
        self.with(|f| f.took_over = true);
    }
}

/// Set on every answer idemgate gives itself ([`crate::error::Problem::into_response`]): the
/// outcome it counts as and the cause the log line names.
#[derive(Clone, Debug)]
pub struct ProblemMark {
    pub outcome: Outcome,
    pub detail: Arc<str>,
}

pub type ReportLayer = TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), Report, (), (), ()>;

/// The `TraceLayer` of the proxy: a span per request and, as the response head leaves, the report.
pub fn layer(gate: Arc<Gate>) -> ReportLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(Report { gate })
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// Debug level: spans exist only when traces are exported (the `otel` feature), and then
/// continue the client's trace.
#[derive(Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        let span = tracing::debug_span!("request", route = Empty, key = Empty, outcome = Empty, status = Empty);
        crate::telemetry::continue_trace(&span, req.headers());
        span
    }
}

#[derive(Clone)]
pub struct Report {
    gate: Arc<Gate>,
}

impl<B> OnResponse<B> for Report {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let problem = response.extensions().get::<ProblemMark>();
        let status = response.status();
        let Some(facts) = response.extensions().get::<Facts>() else {
            // No stage ran to the end: a panic caught above the stages.
            let routes = self.gate.routes();
            let outcome = problem.map_or(Outcome::rejected, |p| p.outcome);
            routes.metrics(None).record(outcome, latency.as_secs_f64());
            let error = problem.map(|p| &*p.detail);
            tracing::warn!(route = "-", outcome = outcome.as_str(), status = status.as_u16(), error, "request");
            return;
        };
        // Read in place: every stage is done with the facts once the response head leaves.
        let fact = crate::lock(&facts.0);
        let outcome = problem.map_or(fact.outcome, |p| p.outcome);
        let metrics = fact.routes.metrics(fact.route_index);
        metrics.record(outcome, latency.as_secs_f64());
        if fact.took_over {
            metrics.lease_expired();
        }
        if problem.is_none() && matches!(outcome, Outcome::forwarded | Outcome::passthrough) {
            metrics.app_answered(status);
        }
        let route = fact.route.as_deref().unwrap_or("-");
        span.record("route", route).record("outcome", outcome.as_str()).record("status", status.as_u16());
        let key = fact.key.as_deref().and_then(|k| logged_key(self.gate.key_logging, k));
        let (route, key, outcome, trace_id) = (route, key.as_deref(), outcome.as_str(), fact.trace_id.as_deref());
        let (method, status, duration_ms) = (&fact.method, status.as_u16(), latency.as_secs_f64() * 1000.0);
        let error = problem.map(|p| &*p.detail);
        // Only present when true: a takeover is rare and worth finding.
        let took_over = fact.took_over.then_some(true);
        if (status >= 500 && error.is_some()) || fact.took_over {
            tracing::warn!(route, key, outcome, %method, status, duration_ms, trace_id, took_over, error, "request");
        } else if tracing::enabled!(tracing::Level::INFO) {
            let line = RequestLine {
                route,
                key,
                outcome,
                method: method.as_str(),
                status,
                duration_us: latency.as_micros() as u64,
                trace_id,
                error,
            };
            if !write_request_line(module_path!(), &line) {
                tracing::info!(route, key, outcome, %method, status, duration_ms, trace_id, error, "request");
            }
        }
    }
}

/// A key as `log.keys` says to log it: shown, as a short digest, or not at all.
pub(crate) fn logged_key(logging: KeyLogging, key: &str) -> Option<Cow<'_, str>> {
    match logging {
        KeyLogging::Shown => Some(Cow::Borrowed(key)),
        KeyLogging::Hashed => Some(Cow::Owned(hex(&Sha256::digest(key.as_bytes())[..8]))),
        KeyLogging::Hidden => None,
    }
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else none.
/// A constant: a name given as `&str` is parsed (and checked for case) on every look-up.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(&TRACEPARENT)?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex_of = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex_of(version, 2) && version != "ff" && hex_of(trace, 32) && hex_of(parent, 16) && hex_of(flags, 2);
    (valid && trace.bytes().any(|b| b != b'0')).then(|| trace.to_string())
}
