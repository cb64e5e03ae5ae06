//! Stages `capture` and `respond`: bounded capture of the app's response, and faithful replay.
//!
//! A response is captured up to `max_response_body`. A larger one still completes the key (the
//! app did its work); its record keeps status and headers only, and the first client receives
//! the whole body, streamed on after the captured prefix.

use crate::budget::Reservation;
use crate::error::{Body, BoxError, Problem};
use crate::store::StoredResponse;
use crate::store::detach;
use crate::upstream::strip_hop_by_hop;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// Any body of bytes, boxed into idemgate's one body type.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An app response with its body read up to the limit.
pub struct Captured<B> {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: CapturedBody<B>,
    /// The captured bytes' share of `server.max_buffered_bytes`, held until the body is sent.
    memory: Reservation,
}

pub enum CapturedBody<B> {
    Complete(Bytes),
    /// Over the limit: what was read so far, and the rest still on the wire.
    Oversized(Bytes, B),
}

/// Reads the response body until it ends or passes `limit`, all before `deadline`. A body that
/// would pass the memory budget is treated as one over `limit`: streamed on, not kept.
pub async fn capture<B>(
    resp: Response<B>,
    limit: u64,
    deadline: Instant,
    timeout: std::time::Duration,
    mut memory: Reservation,
) -> Result<Captured<B>, Problem>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (mut parts, mut body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The replay's length is that of the stored body; the app's framing does not carry over.
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Problem::UpstreamTimeout(timeout)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let e: BoxError = e.into();
                return Err(Problem::UpstreamUnreachable(format!("reading the response body: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are hop-by-hop in practice and are not replayed.
        if let Ok(data) = frame.into_data() {
            let total = buf.len() + data.len();
            if total as u64 > limit || memory.grow_to(total).is_err() {
                // The chunk in hand is sent on with what was read; nothing more is buffered.
                buf.extend_from_slice(&data);
                let body = CapturedBody::Oversized(buf.freeze(), body);
                return Ok(Captured { status: parts.status, headers: parts.headers, body, memory });
            }
            buf.extend_from_slice(&data);
        }
    }
    let body = CapturedBody::Complete(buf.freeze());
    Ok(Captured { status: parts.status, headers: parts.headers, body, memory })
}

impl<B> Captured<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// The record to store: the body only if it was captured whole.
    pub fn to_stored(&self) -> StoredResponse {
        let (body, body_omitted) = match &self.body {
            CapturedBody::Complete(b) => (b.clone(), false),
            CapturedBody::Oversized(..) => (Bytes::new(), true),
        };
        StoredResponse {
            status: self.status.as_u16(),
            headers: self.headers.iter().map(|(n, v)| detach(n, v)).collect(),
            body,
            body_omitted,
        }
    }

    /// The first client's response: the whole body, as the app sent it. The captured bytes stay
    /// reserved until the body is sent (or dropped).
    pub fn into_response(self) -> Response<Body> {
        let body = match self.body {
            CapturedBody::Complete(b) => full(b),
            CapturedBody::Oversized(prefix, rest) => boxed(Prefixed { prefix: Some(prefix), rest }),
        };
        let body = Reserved { inner: body, _memory: self.memory }.boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Marks a replay. A constant: a name given as `&str` is copied into a new allocation on every
/// insert.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A duplicate's answer: the stored response, marked as a replay.
pub fn replay(stored: &StoredResponse) -> Response<Body> {
    let mut response = respond(stored);
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// A stored response as it is, for the request that stored it.
pub fn respond(stored: &StoredResponse) -> Response<Body> {
    let mut response = Response::new(full(stored.body.clone()));
    *response.status_mut() = stored.status_code();
    *response.headers_mut() = stored.header_map();
    response
}

/// The app's response as it arrived, minus hop-by-hop headers, streamed (pass-through routes).
pub fn stream<B>(resp: Response<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, boxed(body))
}

/// A body that keeps its bytes' memory reservation until it is dropped.
struct Reserved {
    inner: Body,
    _memory: Reservation,
}

impl hyper::body::Body for Reserved {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `prefix`, then the rest of `rest`: a body partly read, passed on whole.
pub(crate) fn prefixed<B>(prefix: Bytes, rest: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    boxed(Prefixed { prefix: Some(prefix), rest })
}

/// A body that yields an already-read prefix, then the rest of a live body.
struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> hyper::body::Body for Prefixed<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint.set_lower(rest.lower() + extra);
        hint
    }
}
