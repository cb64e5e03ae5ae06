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
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;

/// The body of every answer the listeners send: tower-http's catch-panic layer, outermost, boxes
/// it in its own type, and hyper serves that as it is (no second box per response).
pub type ResponseBody = tower_http::body::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// The whole request path, as hyper serves it.
pub type Proxy = BoxCloneSyncService<Request<Incoming>, Response<ResponseBody>, Infallible>;

/// The service to the app: every forwarded and passed-through request goes through it.
pub type Upstream = BoxCloneSyncService<Request<Body>, Response<Incoming>, Problem>;

pub fn proxy(gate: Arc<Gate>, app: Upstream) -> Proxy {
    let service = ServiceBuilder::new()
        // Outermost, so that a bug anywhere below answers 500 problem+json and the process lives.
        .layer(CatchPanicLayer::custom(|_panic| Problem::Internal("a request handler panicked".into()).into_response()))
        // Before the trace: the id is in the span, the log line, the app's request and the answer.
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
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

/// The admin listener's service: health, readiness, metrics and keys, each answered within
/// `ADMIN_TIMEOUT` however slow the store is (a probe that times out gets the pod restarted; a
/// 503 only takes it out of the Service's endpoints).
pub type AdminService = BoxCloneSyncService<Request<Incoming>, Response<ResponseBody>, Infallible>;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

pub fn admin(admin: Arc<crate::admin::Admin>) -> AdminService {
    let service = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_panic| Problem::Internal("an admin handler panicked".into()).into_response()))
        .layer(TimeoutLayer::with_status_code(http::StatusCode::SERVICE_UNAVAILABLE, ADMIN_TIMEOUT))
        .service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        });
    BoxCloneSyncService::new(service)
}

/// Request ids: a random prefix per process and a counter, 32 hex digits like a UUID's. Unique
/// within the process and across restarts, without a random draw (a system call) per request.
#[derive(Clone)]
pub struct RequestIds {
    prefix: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds { prefix: crate::gate::random_u64(), next: Arc::default() }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Written in place: a `format!` here cost a second allocation per request.
        let mut id = [0u8; 32];
        for (i, byte) in self.prefix.to_be_bytes().into_iter().chain(n.to_be_bytes()).enumerate() {
            id[2 * i] = HEX[usize::from(byte >> 4)];
            id[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        http::HeaderValue::from_maybe_shared(shared_bytes(&id)).ok().map(RequestId::new)
    }
}

/// `bytes`, copied into a slab of this thread's that many ids share. tower-http clones the id
/// into the request header, the extensions and the answer: a value of its own would be one
/// allocation to copy it and a second when the first clone makes it shareable, per request.
fn shared_bytes(bytes: &[u8]) -> bytes::Bytes {
    const SLAB: usize = 4096;
    thread_local!(static FREE: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new()));
    FREE.with_borrow_mut(|free| {
        if free.capacity() < bytes.len() {
            // The old slab lives on until the last id cut from it is dropped.
            *free = bytes::BytesMut::with_capacity(SLAB.max(bytes.len()));
        }
        free.extend_from_slice(bytes);
        free.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_32_hex_digits() {
        let mut ids = RequestIds { prefix: 0x0123_4567_89ab_cdef, next: Arc::default() };
        let req = Request::new(());
        let id = |ids: &mut RequestIds| ids.make_request_id(&req).unwrap().into_header_value();
        assert_eq!(id(&mut ids), "0123456789abcdef0000000000000000");
        assert_eq!(id(&mut ids), "0123456789abcdef0000000000000001");
    }

    #[test]
    fn ids_cut_from_one_slab_stay_whole_after_the_slab_is_replaced() {
        let mut ids = RequestIds { prefix: 7, next: Arc::default() };
        let req = Request::new(());
        // More ids than one slab holds: the early ones outlive their slab's replacement.
        let all: Vec<_> = (0..1000).map(|_| ids.make_request_id(&req).unwrap().into_header_value()).collect();
        for (n, id) in all.iter().enumerate() {
            assert_eq!(id.to_str().unwrap(), format!("{:016x}{n:016x}", 7), "id {n}");
        }
    }
}
