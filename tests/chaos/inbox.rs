//! The async profile: every route of the stream is an inbox (`delivery: { mode: async }`). After
//! the final round the harness waits, through the admin API as an operator would, until every
//! acknowledged event is completed (or dead), then reads what the store holds for the checks in
//! inbox_invariants.rs.

use super::world::World;
use crate::common::TestClient;
use crate::stream::model::{Event, Provider, Stream};
use crate::stream::record::{ATTEMPT_HEADER, AttemptId};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// High enough that no event can spend them in a run: a dead letter is then a bug, not a policy.
pub const ATTEMPTS: u32 = 1000;
/// Longer than any run, for the same reason.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// After the final round, the queue is empty within this or the run fails.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// The queue gauges are read once a second (`src/delivery.rs`); a few reads are allowed.
const GAUGE_LIMIT: Duration = Duration::from_secs(5);

/// The routes' `delivery` section. The backoff is short so that a failed delivery is tried again
/// within the run, many times over while the app is down.
pub fn delivery() -> String {
    format!(
        "delivery: {{ mode: async, ack_status: 202, attempts: {ATTEMPTS}, backoff: {{ initial: 50ms, max: 500ms }}, max_age: {}s }}",
        MAX_AGE.as_secs()
    )
}

/// An `events` row as the store holds it at the end.
#[derive(Debug, Clone)]
pub struct Row {
    pub route: String,
    pub key: String,
    /// 0 queued, 1 delivering, 2 completed, 3 dead.
    pub state: i64,
    pub attempts: u32,
    /// The provider attempt whose request was queued (its `x-stream-attempt`, stored with it).
    pub origin: Option<AttemptId>,
    pub target: String,
    pub body: Vec<u8>,
    pub response_status: Option<u16>,
    pub response_body: Option<Vec<u8>>,
}

pub const COMPLETED: i64 = 2;
pub const DEAD: i64 = 3;

impl Row {
    /// The app forward the stored response came from (the app writes `"forward":N` in every body).
    pub fn response_forward(&self) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(self.response_body.as_deref()?).ok()?;
        v["forward"].as_u64()
    }
}

/// Every event row, read directly from the file (WAL readers do not wait for the writer).
pub fn read_rows(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT route, key, state, attempts, headers, target, body, response_status, response_body
             FROM events ORDER BY seq",
        )
        .unwrap();
    let rows = stmt.query_map([], |r| {
        let headers: Vec<u8> = r.get(4)?;
        Ok(Row {
            route: r.get(0)?,
            key: r.get(1)?,
            state: r.get(2)?,
            attempts: r.get(3)?,
            origin: origin(&headers),
            target: r.get(5)?,
            body: r.get(6)?,
            response_status: r.get(7)?,
            response_body: r.get(8)?,
        })
    });
    rows.unwrap().map(Result::unwrap).collect()
}

/// The `x-stream-attempt` line of a stored request's headers (`name:value` lines).
fn origin(headers: &[u8]) -> Option<AttemptId> {
    let text = std::str::from_utf8(headers).ok()?;
    let prefix = format!("{ATTEMPT_HEADER}:");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// What the wait for an empty queue saw.
#[derive(Debug, Default)]
pub struct Drain {
    pub took: Duration,
    /// Each polled event's last `state` from `GET /admin/keys/...`.
    pub states: HashMap<usize, String>,
    /// Events still queued or delivering when the limit came.
    pub pending: Vec<usize>,
    /// Routes whose `idemgate_queue_depth` had not come down to 0, with its last value.
    pub gauges: Vec<(String, f64)>,
}

/// Polls `GET /admin/keys/{route}/{key}` for each event until it is `completed` or `dead`, at
/// most `DRAIN_LIMIT`; then waits for every route's `idemgate_queue_depth` gauge to read 0.
pub async fn drain(world: &World, events: &[&Event]) -> Drain {
    let admin = TestClient::new(world.admin());
    let started = Instant::now();
    let mut drain = Drain::default();
    let mut pending: Vec<&Event> = events.to_vec();
    while !pending.is_empty() && started.elapsed() < DRAIN_LIMIT {
        let mut left = Vec::new();
        for &event in &pending {
            let state = state(&admin, event).await;
            if !matches!(state.as_str(), "completed" | "dead") {
                left.push(event);
            }
            drain.states.insert(event.index, state);
        }
        pending = left;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drain.took = started.elapsed();
    drain.pending = pending.iter().map(|e| e.index).collect();
    drain.gauges = gauges(&admin).await;
    drain
}

async fn state(admin: &TestClient, event: &Event) -> String {
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let mut path = format!("/admin/keys/{}/{}", event.provider.route(), enc(&event.key));
    if let Some(scope) = &event.scope {
        path.push_str(&format!("?scope={}", enc(scope)));
    }
    let reply = admin.get(&path).await;
    match reply.status.as_u16() {
        200 => reply.json()["state"].as_str().unwrap_or("?").to_string(),
        status => format!("{status} from the admin API"),
    }
}

/// Routes whose depth gauge is not 0 after `GAUGE_LIMIT`.
async fn gauges(admin: &TestClient) -> Vec<(String, f64)> {
    let routes = [Provider::Github, Provider::Stripe, Provider::Shopify, Provider::Twilio, Provider::Api];
    let deadline = Instant::now() + GAUGE_LIMIT;
    loop {
        let mut high = Vec::new();
        for route in routes.map(Provider::route) {
            let depth = admin.metric(&format!("idemgate_queue_depth{{route=\"{route}\"}}")).await;
            if depth != 0.0 {
                high.push((route.to_string(), depth));
            }
        }
        if high.is_empty() || Instant::now() > deadline {
            return high;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The events that got at least one 2xx (an acknowledgement) from idemgate.
pub fn acknowledged<'a>(stream: &'a Stream, attempts: &[crate::stream::record::Attempt]) -> Vec<&'a Event> {
    stream
        .events
        .iter()
        .filter(|e| {
            attempts.iter().any(|a| a.id.event == e.index && a.reply().is_some_and(|r| (200..300).contains(&r.status)))
        })
        .collect()
}
