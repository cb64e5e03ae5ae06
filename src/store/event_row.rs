//! An async route's event as the SQL stores (SQLite and PostgreSQL) lay it out in a row: the
//! state codes, the columns an event is read from, and those the end of an attempt writes. Each
//! store reads the columns its own way into an [`EventRow`]; what they mean is decided here, once.

use super::queue::{Attempted, EventState, QueuedEvent, StoredRequest};
use super::record::encode_headers;
use super::{RecordId, StoredResponse};
use bytes::Bytes;

/// The state codes. Statements name them as literals, as the partial indexes' predicates do
/// (see the schemas); the tests in tests/queue.rs would fail on any that disagreed.
pub(super) const QUEUED: i16 = 0;
pub(super) const DELIVERING: i16 = 1;
pub(super) const COMPLETED: i16 = 2;
pub(super) const DEAD: i16 = 3;

/// The columns every statement that reads events selects or returns, in [`EventRow`]'s order. A
/// macro, so that `concat!` can build the statements as constants.
macro_rules! event_columns {
    () => {
        "seq, route, scope, key, state, order_key, method, target, headers, body, attempts, first_seen_ms, \
         next_attempt_ms, last_attempt_ms, last_status, last_error, response_status, response_headers, \
         response_body, response_body_omitted"
    };
}
pub(super) use event_columns;

pub(super) fn state_of(code: i64) -> Option<EventState> {
    match i16::try_from(code).ok()? {
        QUEUED => Some(EventState::Queued),
        DELIVERING => Some(EventState::Delivering),
        COMPLETED => Some(EventState::Completed),
        DEAD => Some(EventState::Dead),
        _ => None,
    }
}

/// A stored state code that is none of ours is damage, not a state to guess.
pub(super) fn decode_state(code: i64) -> Result<EventState, String> {
    state_of(code).ok_or_else(|| format!("an event's state is {code}, which is no state"))
}

pub(super) fn request_headers(request: &StoredRequest) -> Vec<u8> {
    encode_headers(&request.headers)
}

/// The columns of [`event_columns!`], as read from a row.
pub(super) struct EventRow {
    pub seq: i64,
    pub route: String,
    pub scope: String,
    pub key: String,
    pub state: i64,
    pub order_key: Option<String>,
    pub method: String,
    pub target: String,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    pub attempts: i64,
    pub first_seen_ms: i64,
    pub next_attempt_ms: i64,
    pub last_attempt_ms: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub response_status: Option<i64>,
    pub response_headers: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    pub response_body_omitted: bool,
}

impl EventRow {
    pub(super) fn into_event(self) -> Result<QueuedEvent, String> {
        let response = self.response_status.map(|status| StoredResponse {
            status: status_of(status),
            headers: StoredResponse::decode_headers(&self.response_headers.unwrap_or_default()),
            body: Bytes::from(self.response_body.unwrap_or_default()),
            body_omitted: self.response_body_omitted,
        });
        Ok(QueuedEvent {
            id: RecordId { route: self.route.into(), scope: self.scope, key: self.key },
            request: StoredRequest {
                method: self.method,
                target: self.target,
                headers: StoredResponse::decode_headers(&self.headers),
                body: Bytes::from(self.body),
            },
            order_key: self.order_key,
            seq: self.seq,
            state: decode_state(self.state)?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            first_seen_ms: self.first_seen_ms,
            next_attempt_ms: self.next_attempt_ms,
            last_attempt_ms: self.last_attempt_ms,
            last_status: self.last_status.map(status_of),
            last_error: self.last_error,
            response,
        })
    }
}

/// Statuses are written from a `u16`; anything else read back is shown as a server error.
fn status_of(stored: i64) -> u16 {
    u16::try_from(stored).unwrap_or(500)
}

/// What the end of an attempt writes: [`Finish::of`] decides it for every store.
pub(super) struct Finish<'a> {
    pub state: i16,
    /// None keeps the stored one (a finished event has no next attempt).
    pub next_attempt_ms: Option<i64>,
    pub last_status: Option<i32>,
    pub last_error: Option<&'a str>,
    pub response: Option<&'a StoredResponse>,
}

impl<'a> Finish<'a> {
    /// A completion's answer counts as the last attempt's status too: the dead letters and the
    /// admin view read `last_status` whatever the state.
    pub(super) fn of(attempted: &'a Attempted) -> Finish<'a> {
        match attempted {
            Attempted::Completed(response) => Finish {
                state: COMPLETED,
                next_attempt_ms: None,
                last_status: Some(i32::from(response.status)),
                last_error: None,
                response: Some(response),
            },
            Attempted::Retry { next_attempt_ms, status, error } => Finish {
                state: QUEUED,
                next_attempt_ms: Some(*next_attempt_ms),
                last_status: status.map(i32::from),
                last_error: error.as_deref(),
                response: None,
            },
            Attempted::Dead { status, error } => Finish {
                state: DEAD,
                next_attempt_ms: None,
                last_status: status.map(i32::from),
                last_error: error.as_deref(),
                response: None,
            },
        }
    }

    pub(super) fn response_headers(&self) -> Option<Vec<u8>> {
        self.response.map(StoredResponse::encode_headers)
    }

    pub(super) fn response_body(&self) -> Option<&'a [u8]> {
        self.response.map(|r| &r.body[..])
    }

    pub(super) fn response_status(&self) -> Option<i32> {
        self.response.map(|r| i32::from(r.status))
    }

    pub(super) fn body_omitted(&self) -> bool {
        self.response.is_some_and(|r| r.body_omitted)
    }
}

/// A count or size the caller gave as unsigned, as SQL's signed 64 bits; past them, the largest.
pub(super) fn sql_count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_and_others_are_damage() {
        for state in [EventState::Queued, EventState::Delivering, EventState::Completed, EventState::Dead] {
            let code = [QUEUED, DELIVERING, COMPLETED, DEAD]
                .into_iter()
                .find(|code| state_of(i64::from(*code)) == Some(state))
                .expect("a code for every state");
            assert_eq!(decode_state(i64::from(code)), Ok(state));
        }
        assert!(decode_state(7).is_err());
        assert!(decode_state(i64::from(i16::MAX) + 1).is_err());
    }

    #[test]
    fn an_attempt_writes_what_it_ended_with() {
        let response = StoredResponse { status: 201, headers: vec![], body: Bytes::new(), body_omitted: true };
        let done = Attempted::Completed(response);
        let finish = Finish::of(&done);
        assert_eq!((finish.state, finish.next_attempt_ms, finish.last_status), (COMPLETED, None, Some(201)));
        assert!(finish.body_omitted());
        let retry = Attempted::Retry { next_attempt_ms: 9, status: None, error: Some("refused".into()) };
        let finish = Finish::of(&retry);
        assert_eq!((finish.state, finish.next_attempt_ms, finish.last_error), (QUEUED, Some(9), Some("refused")));
        assert!(finish.response.is_none());
        let dead = Attempted::Dead { status: Some(503), error: None };
        let finish = Finish::of(&dead);
        assert_eq!((finish.state, finish.last_status, finish.last_error), (DEAD, Some(503), None));
    }
}
