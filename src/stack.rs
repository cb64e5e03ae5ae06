//! The proxy's request path, as one `tower::ServiceBuilder` chain, in the order a request meets it.
//!
//! ```text
//! catch-panic ─► request id ─► sensitive headers ─► trace (span, log line, metrics)
//!   ─► route ─┬─ no route ──────────────────────────────────────────────┐
//!             └─ body limit ─► body + memory budget ─► verify ─► idempotency stage
//!                                                                        ▼
//!                                   app client ◄─ load shed ◄─ concurrency limit ◄─ timeout
//! ```
//!
//! Each line below says why its layer sits where it does; `docs/architecture.md` draws the same
//! chain and says where a new layer goes.

use crate::error::{Body, BoxError, Problem};
use crate::gate::Gate;
use crate::idempotency::IdempotencyLayer;
use crate::layer::report;
use crate::upstream::AppClient;
use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

/// The whole request path, as hyper serves it.
pub type Proxy = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// The service to the app: every forwarded and passed-through request goes through it.
pub type Upstream = BoxCloneSyncService<Request<Body>, Response<Incoming>, Problem>;

pub fn proxy(gate: Arc<Gate>, app: Upstream) -> Proxy {
    let service = ServiceBuilder::new()
        // tower-http boxes bodies in its own type; the listener serves idemgate's.
        .map_response(|response: Response<_>| response.map(crate::replay::boxed))
        // Outermost, so that a bug anywhere below answers 500 problem+json and the process lives.
        .layer(CatchPanicLayer::custom(|_panic| Problem::Internal("a request handler panicked".into()).into_response()))
        // Before the trace: the id is in the span, the log line, the app's request and the answer.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Credentials are marked before anything could log or trace a header.
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION]))
        // One span and one log line per request, counted once, whatever answered it.
        .layer(report::layer(gate.clone()))
        // Route, body limit, body and memory budget, verify, the idempotency stage; unmatched
        // requests go straight to the app. The edge where every Problem becomes its answer.
        .layer(IdempotencyLayer::from_gate(gate))
        .service(app);
    BoxCloneSyncService::new(service)
}

/// The client to the app: each request must get its answer's head within `upstream.timeout`; at
/// most `upstream.max_in_flight` run at once, and past that new ones are shed (503) rather than
/// queued behind a slow app.
pub fn upstream(client: AppClient, timeout: Duration, max_in_flight: usize) -> Upstream {
    let service = ServiceBuilder::new()
        .map_err(move |e: BoxError| Problem::from_app(e, timeout))
        .load_shed()
        .concurrency_limit(max_in_flight)
        .timeout(timeout)
        .service(client);
    BoxCloneSyncService::new(service)
}
