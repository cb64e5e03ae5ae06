//! Stage `body`: a matched request's body, read whole within the route's `max_body`,
//! `server.body_read_timeout` and the memory budget, before anything looks at it.
//!
//! tower-http's `RequestBodyLimitLayer` (set to the whole budget, in [`crate::stack`]) refuses a
//! body no route could take; this stage applies the route's own limit, reserves every byte in
//! the budget (see [`crate::budget`]), and bounds the time of the whole body, not of each chunk:
//! a body trickled a byte a second would pass a per-chunk timeout and hold its connection forever.
//! The next stages get a `Request<Bytes>`, and the reservation in its extensions.

use crate::budget::Reservation;
use crate::error::{Body, BoxError, Problem};
use crate::gate::Gate;
use crate::layer::route::Matched;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// Marks a 413 that came through the stages (the app's, a replay, or a stage's own), as opposed
/// to the one tower-http's body limit gives before them.
#[derive(Clone, Copy, Debug)]
pub struct Staged;

#[derive(Clone)]
pub struct BodyLayer {
    gate: Arc<Gate>,
}

impl BodyLayer {
    pub fn new(gate: Arc<Gate>) -> BodyLayer {
        BodyLayer { gate }
    }
}

impl<S> Layer<S> for BodyLayer {
    type Service = BodyService<S>;
    fn layer(&self, inner: S) -> BodyService<S> {
        BodyService { gate: self.gate.clone(), inner }
    }
}

#[derive(Clone)]
pub struct BodyService<S> {
    gate: Arc<Gate>,
    inner: S,
}

impl<B, S> Service<Request<B>> for BodyService<S>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<Bytes>, Response = Response<Body>, Error = Problem> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Problem>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Problem>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (gate, inner) = (self.gate.clone(), self.inner.clone());
        Box::pin(async move {
            let limit = req.extensions().get::<Matched>().map_or(0, |m| m.route.policy.max_body.0);
            let (mut parts, body) = req.into_parts();
            let mut memory = gate.budget.reservation();
            let read = read_body(&parts, body, limit, gate.body_read_timeout, &mut memory).await;
            if let Err(Problem::OverBudget(_)) = &read {
                gate.budget.refused();
            }
            Matched::keep_reserved(&mut parts.extensions, memory);
            let mut response = inner.oneshot(Request::from_parts(parts, read?)).await?;
            // Only a 413 is ever asked about (see `limit_answer`): no marker on the others.
            if response.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                response.extensions_mut().insert(Staged);
            }
            Ok(response)
        })
    }
}

/// All of the body, within `limit` bytes and `within` time, every byte reserved in `memory`
/// first. A declared length over the limit is refused unread.
async fn read_body<B>(
    parts: &http::request::Parts,
    body: B,
    limit: u64,
    within: std::time::Duration,
    memory: &mut Reservation,
) -> Result<Bytes, Problem>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Problem::BodyTooLarge(limit));
    }
    let declared = declared.map_or(0, |n| n as usize);
    let mut collect = std::pin::pin!(collect_within(body, limit as usize, declared, memory));
    // A webhook's body nearly always comes with its head, already read: then it is taken at once,
    // and no timer is made (one per request, in the runtime's shared timer wheel). Only a body
    // still on its way is raced against `within`, which thus starts a poll later.
    if let Poll::Ready(read) = std::future::poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        return read;
    }
    tokio::time::timeout(within, collect).await.map_err(|_| Problem::BodyTimeout(within))?
}

/// Reads `body` into one buffer, growing the reservation chunk by chunk. A body that arrives in
/// one frame (the usual webhook, read with its head) is kept as hyper read it, with no copy at
/// all. Past the budget, the rest is read and dropped: the sender then gets its 503 (a refusal
/// before the body is read would reach it as a broken connection, mid-upload).
async fn collect_within<B>(body: B, limit: usize, declared: usize, memory: &mut Reservation) -> Result<Bytes, Problem>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut over = memory.grow_to(declared).err();
    let mut whole: Option<Bytes> = None;
    let mut buf = bytes::BytesMut::new();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(e.into(), limit))?;
        let Ok(data) = frame.into_data() else { continue };
        read += data.len();
        if read > limit {
            return Err(Problem::BodyTooLarge(limit as u64));
        }
        if over.is_none() {
            over = memory.grow_to(read).err();
        }
        match over {
            None if whole.is_none() && buf.is_empty() => whole = Some(data),
            None => {
                if let Some(first) = whole.take() {
                    buf.reserve(declared.max(read));
                    buf.extend_from_slice(&first);
                }
                buf.extend_from_slice(&data);
            }
            Some(_) => {
                whole = None;
                buf.clear();
            }
        }
    }
    match over {
        Some(over) => Err(over.into()),
        None => Ok(whole.unwrap_or_else(|| buf.freeze())),
    }
}

fn body_error(e: BoxError, limit: usize) -> Problem {
    if e.is::<http_body_util::LengthLimitError>() {
        Problem::BodyTooLarge(limit as u64)
    } else {
        Problem::BodyUnreadable(e.to_string())
    }
}

/// What a shadow route's read of the body gave: the whole body, or a body that enforcing would
/// have refused (over `max_body`, over the memory budget, too slow), to be passed on as it is.
pub(crate) enum Read {
    Whole(Bytes, Reservation),
    Spilled(Body, &'static str),
}

/// Reads the body like [`read_body`], but never refuses it: what enforcing would refuse is
/// passed on whole (the bytes read so far, then the rest as it comes), since a shadow route
/// forwards every request. Only a body the sender itself broke is an error.
pub(crate) async fn read_or_spill<B>(
    parts: &http::request::Parts,
    body: B,
    limit: u64,
    within: std::time::Duration,
    mut memory: Reservation,
) -> Result<Read, Problem>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Read::Spilled(crate::replay::boxed(body), OVER_MAX_BODY));
    }
    let declared = declared.unwrap_or(0) as usize;
    if memory.grow_to(declared).is_err() {
        return Ok(Read::Spilled(crate::replay::boxed(body), OVER_BUDGET));
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = bytes::BytesMut::with_capacity(declared);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Ok(Read::Spilled(crate::replay::prefixed(buf.freeze(), body), TOO_SLOW)),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(|e| body_error(e.into(), limit as usize))?,
        };
        let Ok(data) = frame.into_data() else { continue };
        let read = buf.len() + data.len();
        let refused =
            if read as u64 > limit { Some(OVER_MAX_BODY) } else { memory.grow_to(read).err().map(|_| OVER_BUDGET) };
        buf.extend_from_slice(&data);
        if let Some(why) = refused {
            return Ok(Read::Spilled(crate::replay::prefixed(buf.freeze(), body), why));
        }
    }
    Ok(Read::Whole(buf.freeze(), memory))
}

const OVER_MAX_BODY: &str = "the body is larger than max_body";
const OVER_BUDGET: &str = "the body would pass server.max_buffered_bytes";
const TOO_SLOW: &str = "the body did not arrive within server.body_read_timeout";
