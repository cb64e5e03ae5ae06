//! The durable inbox of async routes (`delivery: { mode: async }`): what the stores keep per
//! event between the acknowledgement and the app's answer.
//!
//! An event is keyed like a record (route, scope, key) and lives in a table of its own, in one of
//! four states: `queued` (waiting for its next attempt), `delivering` (leased to one worker until
//! `lease_until_ms`), `completed` (the app answered with a stored status; its response is kept)
//! and `dead` (attempts or `max_age` ran out). Its row stays until the route's ttl ends whatever
//! its state, so a duplicate is recognised at any time and never queued twice.

use super::{RecordId, StoredResponse};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// A request as it arrived (hop-by-hop headers removed), kept to be delivered later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub method: String,
    /// Path and query, as the sender wrote them.
    pub target: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What [`super::Store::enqueue`] is asked to keep.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: RecordId,
    pub request: StoredRequest,
    /// The `order_by` value: events that share it are delivered one at a time, in arrival order.
    pub order_key: Option<String>,
    pub now_ms: i64,
    /// When the row may be swept once completed or dead (the route's ttl).
    pub expires_ms: i64,
    /// Events of the route queued or delivering at most; the next one is refused.
    pub queue_limit: u64,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored durably (synced where the store syncs): the sender may be acknowledged.
    Queued,
    /// The key is already known on this route, in this state: acknowledge again, queue nothing.
    Duplicate(EventState),
    /// `queue_limit` events are already waiting or being delivered.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    Queued,
    Delivering,
    Completed,
    Dead,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Queued => "queued",
            EventState::Delivering => "delivering",
            EventState::Completed => "completed",
            EventState::Dead => "dead",
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub id: RecordId,
    pub request: StoredRequest,
    pub order_key: Option<String>,
    /// Arrival order within the store (increasing).
    pub seq: i64,
    pub state: EventState,
    /// Attempts made so far; while delivering, the current attempt's number.
    pub attempts: u32,
    /// When it was first acknowledged (or retried from the dead letters): `max_age` counts from here.
    pub first_seen_ms: i64,
    pub next_attempt_ms: i64,
    pub last_attempt_ms: Option<i64>,
    /// The app's status on the last attempt that got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed without an answer (refused, timed out).
    pub last_error: Option<String>,
    /// The app's response, once completed.
    pub response: Option<StoredResponse>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Attempted {
    /// The app answered with a status in `store_status`.
    Completed(StoredResponse),
    /// Another attempt follows at `next_attempt_ms`.
    Retry { next_attempt_ms: i64, status: Option<u16>, error: Option<String> },
    /// Attempts or `max_age` ran out.
    Dead { status: Option<u16>, error: Option<String> },
}

/// A route's queue, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Queued or delivering.
    pub depth: u64,
    /// The first-seen time of the oldest queued or delivering event.
    pub oldest_ms: Option<i64>,
    pub dead: u64,
}
