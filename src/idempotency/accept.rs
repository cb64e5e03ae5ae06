//! Stage `accept` (async routes, `delivery: { mode: async }`): instead of claim and forward, the
//! request is stored in the route's durable inbox and the sender acknowledged at once; the
//! [`crate::delivery`] worker delivers it to the app later, with retries.
//!
//! The acknowledgement leaves only once the store has the event durably (SQLite: synced), so an
//! acknowledged event outlives the process. A duplicate, whatever its event's state (queued,
//! being delivered, delivered, dead), gets the same acknowledgement, marked as a replay, and
//! queues nothing.

use crate::error::{Body, Problem};
use crate::gate::Gate;
use crate::key::RequestView;
use crate::layer::report::Facts;
use crate::metrics::Outcome;
use crate::route::Route;
use crate::store::queue::{Enqueued, NewEvent, StoredRequest};
use crate::store::{RecordId, now_ms};
use crate::upstream::{ClientAddr, append_forwarded_for, strip_hop_by_hop};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};

/// `order_by` values are grouping keys; longer ones are not one.
const ORDER_KEY_MAX: usize = 1024;

pub(super) async fn accept(
    gate: &Gate,
    route: &Route,
    id: RecordId,
    mut parts: Parts,
    body: Bytes,
    facts: Option<&Facts>,
) -> Result<Response<Body>, Problem> {
    let order_key = route.order_by.as_ref().and_then(|source| {
        let view = RequestView::new(&parts.headers, parts.uri.query(), &body);
        source.extract(&view, ORDER_KEY_MAX).ok().flatten()
    });
    // The worker sets these itself on every attempt; a sender's copies must not reach the app.
    strip_hop_by_hop(&mut parts.headers);
    // As the app client does for a request it forwards now: the worker's call has no client.
    if let Some(ClientAddr(client)) = parts.extensions.get::<ClientAddr>().copied() {
        append_forwarded_for(&mut parts.headers, client);
    }
    gate.routes().strip_forged_keys(&mut parts.headers);
    parts.headers.remove(crate::delivery::ATTEMPT_HEADER);
    let request = StoredRequest {
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        headers: parts.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        body,
    };
    let now = now_ms();
    let delivery = &route.policy.delivery;
    let key = id.key.clone();
    let event = NewEvent {
        id,
        request,
        order_key,
        now_ms: now,
        expires_ms: now.saturating_add(route.policy.ttl.0.as_millis() as i64),
        queue_limit: delivery.queue_limit,
    };
    let note = |outcome| facts.iter().for_each(|f| f.outcome(outcome));
    match gate.records.backend().enqueue(event).await? {
        Enqueued::Queued => {
            note(Outcome::queued);
            gate.deliveries.wake();
            Ok(acknowledgement(delivery.ack_status, &key, false))
        }
        Enqueued::Duplicate(_) => {
            note(Outcome::replayed);
            Ok(acknowledgement(delivery.ack_status, &key, true))
        }
        Enqueued::Full => Err(Problem::QueueFull(delivery.queue_limit)),
    }
}

/// `ack_status` with `{"key": ...}`; a duplicate's is the same, with `Idempotent-Replayed: true`.
fn acknowledgement(status: u16, key: &str, replayed: bool) -> Response<Body> {
    let body = serde_json::json!({ "key": key }).to_string();
    let mut response = Response::new(crate::replay::full(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        response.headers_mut().insert(crate::replay::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}
