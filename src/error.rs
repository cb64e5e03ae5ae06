//! The one mapping from failures to responses: RFC 9457 `application/problem+json`.
//!
//! Stages return a [`Problem`]; the pipeline's edge turns it into a response with
//! [`Problem::into_response`] and logs it once, with the request's route and key.

use crate::key::KeyError;
use crate::metrics::Outcome;
use crate::route::PathError;
use crate::store::StoreError;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A boxed future that is `Send`: the layers box the futures of the services they wrap.
pub type SendFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Everything idemgate itself can answer instead of the app.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("the request path cannot be normalized safely: {0}")]
    BadPath(#[from] PathError),
    #[error("{0}")]
    BadKey(#[from] KeyError),
    #[error("the scope ({0}) is missing")]
    MissingScope(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("the request body is larger than server.max_buffered_bytes")]
    BodyOverCap,
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// `retry_after` is what is left of the holder's lease, in seconds (see [`Problem::in_flight`]).
    #[error("an earlier request with this idempotency key is still in progress")]
    InFlight { retry_after: u64 },
    #[error("this idempotency key was already used with a different payload")]
    Mismatch,
    #[error("the app could not be reached: {0}")]
    UpstreamUnreachable(String),
    #[error("the app did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    /// `unmatched: reject` and no route matches the request (its path, or its method).
    #[error("no route matches this request")]
    NoRoute,
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("protocol upgrades are not accepted on a protected route")]
    UpgradeRefused,
    #[error("transfer coding {0:?} is not supported; only chunked is")]
    UnsupportedTransferCoding(String),
    #[error("the signature could not be verified: {0}")]
    Unverified(#[from] crate::verify::VerifyError),
    #[error("{0}")]
    OverBudget(#[from] crate::budget::OverBudget),
    /// The app already has `upstream.max_in_flight` requests: shed rather than queued.
    #[error("the app has as many requests in flight as upstream.max_in_flight allows")]
    UpstreamBusy,
    /// An async route's queue holds `delivery.queue_limit` events waiting or being delivered.
    #[error("the route's delivery queue is full ({0} events waiting or being delivered)")]
    QueueFull(u64),
    /// A bug in idemgate (a task that panicked); never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The longest `Retry-After` a 409 gives: a lease can be long (an app with a 10-minute timeout),
/// and a sender told to wait that long would give up on a key that usually ends in moments.
const MAX_IN_FLIGHT_RETRY_AFTER: u64 = 60;

impl Problem {
    /// A 409 for a key whose holder's lease ends at `lease_expires_ms`: retrying before then can
    /// only meet the same claim (unless it ends early), so that is when the sender should retry.
    pub fn in_flight(lease_expires_ms: i64, now_ms: i64) -> Problem {
        let left_ms = lease_expires_ms.saturating_sub(now_ms).max(0) as u64;
        Problem::InFlight { retry_after: left_ms.div_ceil(1000).clamp(1, MAX_IN_FLIGHT_RETRY_AFTER) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Problem::BadPath(_)
            | Problem::BadKey(_)
            | Problem::MissingScope(_)
            | Problem::BodyUnreadable(_)
            | Problem::BadRequest(_) => StatusCode::BAD_REQUEST,
            Problem::UpgradeRefused => StatusCode::BAD_REQUEST,
            Problem::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            Problem::BodyTooLarge(_) | Problem::BodyOverCap => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Problem::InFlight { .. } => StatusCode::CONFLICT,
            Problem::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Problem::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Problem::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Problem::Store(_) | Problem::OverBudget(_) | Problem::UpstreamBusy | Problem::QueueFull(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Problem::NotFound(_) | Problem::NoRoute => StatusCode::NOT_FOUND,
            Problem::Unauthorized | Problem::Unverified(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// A stable slug, part of the `type` URI; clients may branch on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::BadPath(_) => "bad-path",
            Problem::BadKey(KeyError::Missing(_)) => "missing-key",
            Problem::BadKey(_) => "invalid-key",
            Problem::MissingScope(_) => "missing-scope",
            Problem::BodyTooLarge(_) | Problem::BodyOverCap => "body-too-large",
            Problem::BodyUnreadable(_) => "bad-body",
            Problem::BodyTimeout(_) => "body-timeout",
            Problem::InFlight { .. } => "key-in-flight",
            Problem::Mismatch => "payload-mismatch",
            Problem::UpstreamUnreachable(_) => "upstream-unreachable",
            Problem::UpstreamTimeout(_) => "upstream-timeout",
            Problem::Store(_) => "store-unavailable",
            Problem::OverBudget(_) => "memory-budget",
            Problem::UpstreamBusy => "upstream-busy",
            Problem::QueueFull(_) => "queue-full",
            Problem::NotFound(_) => "not-found",
            Problem::NoRoute => "no-route",
            Problem::Unauthorized => "unauthorized",
            Problem::BadRequest(_) => "bad-request",
            Problem::UpgradeRefused => "upgrade-refused",
            Problem::UnsupportedTransferCoding(_) => "unsupported-transfer-coding",
            Problem::Unverified(_) => "signature-invalid",
            Problem::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Problem::BadPath(_) => "Unsafe request path",
            Problem::BadKey(KeyError::Missing(_)) => "Missing idempotency key",
            Problem::BadKey(_) => "Invalid idempotency key",
            Problem::MissingScope(_) => "Missing scope",
            Problem::BodyTooLarge(_) | Problem::BodyOverCap => "Request body too large",
            Problem::BodyUnreadable(_) => "Unreadable request body",
            Problem::BodyTimeout(_) => "Request body too slow",
            Problem::InFlight { .. } => "Request in progress",
            Problem::Mismatch => "Idempotency key reused with another payload",
            Problem::UpstreamUnreachable(_) => "Upstream unreachable",
            Problem::UpstreamTimeout(_) => "Upstream timeout",
            Problem::Store(_) => "Idempotency store unavailable",
            Problem::OverBudget(_) => "Too many bodies in memory",
            Problem::UpstreamBusy => "Upstream busy",
            Problem::QueueFull(_) => "Delivery queue full",
            Problem::NotFound(_) => "Not found",
            Problem::NoRoute => "No route",
            Problem::Unauthorized => "Unauthorized",
            Problem::BadRequest(_) => "Bad request",
            Problem::UpgradeRefused => "Upgrade refused",
            Problem::UnsupportedTransferCoding(_) => "Unsupported transfer coding",
            Problem::Unverified(_) => "Invalid signature",
            Problem::Internal(_) => "Internal error",
        }
    }

    /// The outcome label this problem is counted under.
    pub fn outcome(&self) -> Outcome {
        match self {
            Problem::InFlight { .. } => Outcome::conflict,
            Problem::Mismatch => Outcome::mismatch,
            // Internal: the only task that can fail so is the exchange with the app.
            Problem::UpstreamUnreachable(_)
            | Problem::UpstreamTimeout(_)
            | Problem::UpstreamBusy
            | Problem::Internal(_) => Outcome::upstream_error,
            Problem::Store(_) => Outcome::store_error,
            Problem::Unverified(_) => Outcome::unverified,
            _ => Outcome::rejected,
        }
    }

    /// Seconds a client should wait before trying again, where trying again can succeed.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Problem::InFlight { retry_after } => Some(*retry_after),
            Problem::UpstreamUnreachable(_)
            | Problem::UpstreamTimeout(_)
            | Problem::Store(_)
            | Problem::UpstreamBusy
            | Problem::OverBudget(_) => Some(1),
            // A full queue drains at the app's pace: a little later is enough.
            Problem::QueueFull(_) => Some(30),
            _ => None,
        }
    }

    /// A failure of the service behind the idempotency stage (the app client, or an embedding
    /// app's own service), as the problem it is answered with.
    pub fn from_app(error: BoxError, timeout: std::time::Duration) -> Problem {
        let error = match error.downcast::<Problem>() {
            Ok(problem) => return *problem,
            Err(error) => error,
        };
        if error.is::<tower::timeout::error::Elapsed>() {
            Problem::UpstreamTimeout(timeout)
        } else if error.is::<tower::load_shed::error::Overloaded>() {
            Problem::UpstreamBusy
        } else {
            Problem::UpstreamUnreachable(describe(&*error))
        }
    }

    /// The one mapping from a failure to its answer: problem+json, marked with the outcome it is
    /// counted under (for the request's report).
    pub fn into_response(self) -> Response<Body> {
        let mark = crate::layer::report::ProblemMark { outcome: self.outcome(), detail: self.to_string().into() };
        let mut response = self.to_response();
        response.extensions_mut().insert(mark);
        response
    }

    fn to_response(&self) -> Response<Body> {
        let status = self.status();
        let body = serde_json::json!({
            "type": format!("urn:idemgate:problem:{}", self.kind()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = Response::new(crate::replay::full(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// An error with its chain of causes, as one line.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
