//! The durable inbox of async routes (issue 17) against every backend that keeps one: SQLite
//! always; PostgreSQL (statements unnamed, then prepared, then two stores as two replicas) when
//! `IDEMGATE_TEST_POSTGRES_URL` names a server (otherwise those runs say they were skipped). The
//! same functions run unchanged against each, on a store of the run's own: a fresh SQLite file, a
//! PostgreSQL schema created for the run and dropped after it. Times are given to every operation,
//! so the tests move a clock of their own ([`T0`] onwards) instead of sleeping.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idemgate::config::{Dur, PostgresConfig};
use idemgate::store::queue::{Attempted, Enqueued, EventState, NewEvent, QueueStats, QueuedEvent, StoredRequest};
use idemgate::store::{Claim, Completed, PostgresStore, RecordId, SqliteStore, Store, StoredResponse, now_ms};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The tests' clock starts here; events live until [`FAR`] unless a test says otherwise.
const T0: i64 = 1_000_000;
const FAR: i64 = T0 + 1_000_000_000;
const LEASE: i64 = 1_000;
const LIMIT: u64 = 1_000;

/// A store under test, and what must outlive it (the SQLite folder, the PostgreSQL schema).
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _keep: Keep,
}

enum Keep {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { _schema: Schema },
}

/// Says so on the terminal even though the test harness captures output: a skipped backend must
/// not pass silently.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why}");
}

fn run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{:016x}", RandomState::new().hash_one((now_ms(), std::process::id())))
}

fn sqlite() -> (Backend, SqliteStore, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let store = SqliteStore::open(&path).unwrap();
    let backend = Backend { name: "sqlite", store: Arc::new(store.clone()), _keep: Keep::Sqlite { _dir: dir } };
    (backend, store, path)
}

/// A store in a schema of the run's own, and the url that reaches that schema (for replicas).
async fn postgres(prepared_statements: bool) -> Option<(Backend, String)> {
    let Ok(url) = std::env::var("IDEMGATE_TEST_POSTGRES_URL") else {
        skipped("IDEMGATE_TEST_POSTGRES_URL not set");
        return None;
    };
    let (url, schema) = Schema::create(&url).await?;
    let store = open_postgres(&url, prepared_statements).await;
    let name = if prepared_statements { "postgres (prepared statements)" } else { "postgres" };
    Some((Backend { name, store, _keep: Keep::Postgres { _schema: schema } }, url))
}

async fn open_postgres(url: &str, prepared_statements: bool) -> Arc<dyn Store> {
    let cfg = PostgresConfig {
        url: url.to_string(),
        pool_size: 8,
        timeout: Dur(Duration::from_secs(10)),
        prepared_statements,
    };
    Arc::new(PostgresStore::open(&cfg).await.expect("IDEMGATE_TEST_POSTGRES_URL is set but the server cannot be used"))
}

/// A PostgreSQL schema of the run's own, dropped with the guard (also when the test fails).
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    /// The schema and a url whose connections use it; None, after saying so, where the server
    /// refuses the `options` startup parameter (pgbouncer does).
    async fn create(url: &str) -> Option<(String, Schema)> {
        let name = format!("idemgate_queue_{}", run_id());
        let separator = if url.contains('?') { '&' } else { '?' };
        let in_schema = format!("{url}{separator}options=-c%20search_path%3D{name}");
        if let Err(e) = tokio_postgres::connect(&in_schema, tokio_postgres::NoTls).await {
            skipped(&format!("PostgreSQL refuses a search_path in the url's options: {e}"));
            return None;
        }
        pg(url, &format!("CREATE SCHEMA {name}")).await;
        Some((in_schema, Schema { url: url.to_string(), name }))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, sql) = (self.url.clone(), format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(pg(&url, &sql));
        })
        .join();
    }
}

async fn pg(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

fn id(route: &str, key: &str) -> RecordId {
    RecordId { route: route.into(), scope: String::new(), key: key.into() }
}

/// A request as a sender might send it: repeated headers, and a body that is not text.
fn request(key: &str) -> StoredRequest {
    StoredRequest {
        method: "POST".into(),
        target: format!("/hooks/{key}?attempt=first"),
        headers: vec![
            (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json")),
            (HeaderName::from_static("x-multi"), HeaderValue::from_static("a")),
            (HeaderName::from_static("x-multi"), HeaderValue::from_static("b")),
        ],
        body: Bytes::from(format!("{{\"id\":\"{key}\"}}\n\x00\u{ff}")),
    }
}

fn new_event(id: RecordId, order_key: Option<&str>, now_ms: i64) -> NewEvent {
    let request = request(&id.key);
    NewEvent { id, request, order_key: order_key.map(str::to_string), now_ms, expires_ms: FAR, queue_limit: LIMIT }
}

fn response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            (HeaderName::from_static("content-type"), HeaderValue::from_static("text/plain")),
            (HeaderName::from_static("set-cookie"), HeaderValue::from_static("a=1")),
            (HeaderName::from_static("set-cookie"), HeaderValue::from_static("b=2")),
        ],
        body: Bytes::from_static(b"done\x00\xff\n"),
        body_omitted: false,
    }
}

fn completed() -> Attempted {
    Attempted::Completed(response())
}

fn dead(status: u16) -> Attempted {
    Attempted::Dead { status: Some(status), error: None }
}

impl Backend {
    async fn enqueue(&self, event: NewEvent) -> Enqueued {
        let key = event.id.key.clone();
        self.store.enqueue(event).await.unwrap_or_else(|e| panic!("{}: enqueue {key}: {e}", self.name))
    }

    /// Enqueues `key` on `route` at `now_ms`, which must be new.
    async fn queued(&self, route: &str, key: &str, order_key: Option<&str>, now_ms: i64) {
        let enqueued = self.enqueue(new_event(id(route, key), order_key, now_ms)).await;
        assert_eq!(enqueued, Enqueued::Queued, "{}: {route}/{key}", self.name);
    }

    async fn take(&self, route: &str, now_ms: i64, max: usize, token: u64) -> Vec<QueuedEvent> {
        let taken = self.store.take_due(route, now_ms, max, token, LEASE).await;
        taken.unwrap_or_else(|e| panic!("{}: take_due({route}): {e}", self.name))
    }

    /// The keys [`Backend::take`] leased, in the order returned.
    async fn take_keys(&self, route: &str, now_ms: i64, max: usize, token: u64) -> Vec<String> {
        self.take(route, now_ms, max, token).await.into_iter().map(|e| e.id.key).collect()
    }

    /// `_at` is when the attempt ended in the test's story; the store does not need it.
    async fn finish(&self, id: &RecordId, token: u64, attempted: Attempted, _at: i64) -> bool {
        let finished = self.store.finish_attempt(id.clone(), token, attempted).await;
        finished.unwrap_or_else(|e| panic!("{}: finish_attempt({id:?}): {e}", self.name))
    }

    async fn event(&self, id: &RecordId) -> Option<QueuedEvent> {
        self.store.event(id.clone()).await.unwrap_or_else(|e| panic!("{}: event({id:?}): {e}", self.name))
    }

    async fn stats(&self, route: &str) -> QueueStats {
        self.store.queue_stats(route).await.unwrap_or_else(|e| panic!("{}: queue_stats({route}): {e}", self.name))
    }
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// A duplicate is recognised in every state, answered with that state, and changes nothing:
/// not the request, not the times, not the attempts.
async fn a_duplicate_in_any_state_changes_nothing(b: &Backend) {
    let (route, e1, e2) = ("dup", id("dup", "e1"), id("dup", "e2"));
    b.queued(route, "e1", Some("cus_1"), T0).await;
    let stored = b.event(&e1).await.expect("stored");
    assert_eq!(stored.request, request("e1"), "{}: the request, byte for byte", b.name);
    assert_eq!(stored.order_key.as_deref(), Some("cus_1"), "{}", b.name);
    assert_eq!(stored.state, EventState::Queued, "{}", b.name);
    assert_eq!((stored.attempts, stored.first_seen_ms, stored.next_attempt_ms), (0, T0, T0), "{}", b.name);
    assert_eq!((stored.last_attempt_ms, stored.last_status, &stored.last_error), (None, None, &None), "{}", b.name);
    assert_eq!(stored.response, None, "{}", b.name);

    let again = |state| async move {
        let mut duplicate = new_event(id("dup", "e1"), None, T0 + 50);
        duplicate.request.body = Bytes::from_static(b"another body");
        let before = b.event(&id("dup", "e1")).await;
        assert_eq!(b.enqueue(duplicate).await, Enqueued::Duplicate(state), "{}: {state:?}", b.name);
        assert_eq!(b.event(&id("dup", "e1")).await, before, "{}: a duplicate while {state:?} changed it", b.name);
    };
    again(EventState::Queued).await;
    assert_eq!(b.take_keys(route, T0 + 10, 10, 1).await, keys(&["e1"]), "{}", b.name);
    again(EventState::Delivering).await;
    assert!(b.finish(&e1, 1, completed(), T0 + 20).await, "{}", b.name);
    again(EventState::Completed).await;

    b.queued(route, "e2", None, T0 + 30).await;
    assert_eq!(b.take_keys(route, T0 + 30, 10, 2).await, keys(&["e2"]), "{}", b.name);
    assert!(b.finish(&e2, 2, dead(500), T0 + 40).await, "{}", b.name);
    let before = b.event(&e2).await;
    assert_eq!(b.enqueue(new_event(e2.clone(), None, T0 + 50)).await, Enqueued::Duplicate(EventState::Dead));
    assert_eq!(b.event(&e2).await, before, "{}: a duplicate of a dead letter changed it", b.name);

    // The same key in another scope is another event.
    let scoped = RecordId { scope: "0123abcd".into(), ..e1.clone() };
    assert_eq!(b.enqueue(new_event(scoped, None, T0)).await, Enqueued::Queued, "{}", b.name);
}

/// Past `queue_limit` waiting events a new key is refused and nothing is kept; a known key is
/// still a duplicate; finished events do not count, and each route has a queue of its own.
async fn a_full_queue_refuses_new_keys_and_only_waiting_events_count(b: &Backend) {
    let route = "full";
    let limited = |key: &str| NewEvent { queue_limit: 3, ..new_event(id(route, key), None, T0) };
    for key in ["a", "b", "c"] {
        assert_eq!(b.enqueue(limited(key)).await, Enqueued::Queued, "{}: {key}", b.name);
    }
    assert_eq!(b.enqueue(limited("d")).await, Enqueued::Full, "{}", b.name);
    assert_eq!(b.event(&id(route, "d")).await, None, "{}: a refused event is not kept", b.name);
    assert_eq!(b.enqueue(limited("a")).await, Enqueued::Duplicate(EventState::Queued), "{}", b.name);
    let other = NewEvent { queue_limit: 3, ..new_event(id("full-other", "d"), None, T0) };
    assert_eq!(b.enqueue(other).await, Enqueued::Queued, "{}: another route's queue", b.name);

    assert_eq!(b.take_keys(route, T0, 2, 1).await, keys(&["a", "b"]), "{}", b.name);
    assert_eq!(b.enqueue(limited("d")).await, Enqueued::Full, "{}: delivering events count", b.name);
    assert!(b.finish(&id(route, "a"), 1, completed(), T0).await);
    assert!(b.finish(&id(route, "b"), 1, dead(410), T0).await);
    assert_eq!(b.enqueue(limited("d")).await, Enqueued::Queued, "{}: finished events do not count", b.name);
    assert_eq!(b.enqueue(limited("e")).await, Enqueued::Queued, "{}", b.name);
    assert_eq!(b.enqueue(limited("f")).await, Enqueued::Full, "{}", b.name);
    // A forgotten waiting event frees its place; a dead letter retried takes one again.
    assert!(b.store.forget_event(id(route, "c")).await.unwrap());
    assert!(b.store.retry_dead(id(route, "b"), T0).await.unwrap());
    assert_eq!(b.enqueue(limited("f")).await, Enqueued::Full, "{}", b.name);
    assert!(b.store.forget_event(id(route, "d")).await.unwrap());
    assert_eq!(b.enqueue(limited("f")).await, Enqueued::Queued, "{}", b.name);
    assert_eq!(b.stats(route).await.depth, 3, "{}", b.name);
}

/// Only due events are leased, oldest first, at most `max`; each lease counts an attempt, and
/// a leased event is not due again until its lease ends (an interrupted delivery).
async fn take_due_leases_due_events_in_arrival_order(b: &Backend) {
    let route = "due";
    for (i, key) in ["e0", "e1", "e2", "e3", "e4"].into_iter().enumerate() {
        b.queued(route, key, None, T0 + i as i64).await;
    }
    b.queued(route, "later", None, T0 + 10_000).await;
    assert!(b.take(route, T0 + 100, 0, 1).await.is_empty(), "{}: max 0", b.name);

    let first = b.take(route, T0 + 100, 2, 1).await;
    assert_eq!(first.iter().map(|e| e.id.key.as_str()).collect::<Vec<_>>(), ["e0", "e1"], "{}", b.name);
    assert!(first[0].seq < first[1].seq, "{}: seq grows with arrival", b.name);
    for event in &first {
        assert_eq!(event.state, EventState::Delivering, "{}", b.name);
        assert_eq!((event.attempts, event.last_attempt_ms), (1, Some(T0 + 100)), "{}", b.name);
        assert_eq!(b.event(&event.id).await.as_ref(), Some(event), "{}: returned as stored", b.name);
    }
    assert_eq!(b.take_keys(route, T0 + 200, 10, 2).await, keys(&["e2", "e3", "e4"]), "{}", b.name);
    assert!(b.take(route, T0 + 300, 10, 3).await.is_empty(), "{}: all leased, `later` not due", b.name);

    // e0 and e1's lease ends at T0 + 1100, e2 to e4's at T0 + 1200.
    let again = b.take(route, T0 + 1_100, 10, 4).await;
    assert_eq!(again.iter().map(|e| (e.id.key.as_str(), e.attempts)).collect::<Vec<_>>(), [("e0", 2), ("e1", 2)]);
    assert!(!b.finish(&id(route, "e0"), 1, completed(), T0 + 1_150).await, "{}: the old lease's token", b.name);
    assert!(b.finish(&id(route, "e0"), 4, completed(), T0 + 1_150).await, "{}: the new one's", b.name);
    let rest = b.take(route, T0 + 10_000, 10, 5).await;
    let attempts: Vec<_> = rest.iter().map(|e| (e.id.key.as_str(), e.attempts)).collect();
    assert_eq!(attempts, [("e1", 3), ("e2", 2), ("e3", 2), ("e4", 2), ("later", 1)], "{}", b.name);
}

/// Events sharing an order key go one at a time, in arrival order: a later one waits while an
/// earlier one is queued (retrying) or delivering, and goes once it completed or died. Other
/// keys, events without one, and the same key in another scope do not wait.
async fn events_sharing_an_order_key_go_one_at_a_time(b: &Backend) {
    let route = "ordered";
    let (a1, a2, b1) = (id(route, "a1"), id(route, "a2"), id(route, "b1"));
    b.queued(route, "a1", Some("a"), T0).await;
    b.queued(route, "a2", Some("a"), T0).await;
    b.queued(route, "b1", Some("b"), T0).await;
    b.queued(route, "b2", Some("b"), T0).await;
    b.queued(route, "free", None, T0).await;
    let elsewhere = RecordId { scope: "0123abcd".into(), ..id(route, "a-elsewhere") };
    assert_eq!(b.enqueue(new_event(elsewhere.clone(), Some("a"), T0)).await, Enqueued::Queued);
    let first = b.take_keys(route, T0, 10, 1).await;
    assert_eq!(first, keys(&["a1", "b1", "free", "a-elsewhere"]), "{}", b.name);
    assert!(b.finish(&id(route, "free"), 1, completed(), T0 + 10).await);
    assert!(b.finish(&elsewhere, 1, completed(), T0 + 10).await);

    let retry = Attempted::Retry { next_attempt_ms: T0 + 500, status: Some(503), error: None };
    assert!(b.finish(&a1, 1, retry, T0 + 10).await);
    assert!(b.take(route, T0 + 100, 10, 2).await.is_empty(), "{}: a2 waits for a1's retry", b.name);
    assert_eq!(b.take_keys(route, T0 + 500, 10, 3).await, keys(&["a1"]), "{}: a2 waits while a1 is out", b.name);
    assert!(b.finish(&a1, 3, completed(), T0 + 600).await);
    assert_eq!(b.take_keys(route, T0 + 600, 10, 4).await, keys(&["a2"]), "{}: a1 completed", b.name);

    b.queued(route, "a3", Some("a"), T0 + 700).await;
    assert!(b.take(route, T0 + 700, 10, 5).await.is_empty(), "{}: a3 waits for a2", b.name);
    assert!(b.finish(&a2, 4, dead(500), T0 + 800).await);
    assert_eq!(b.take_keys(route, T0 + 800, 10, 6).await, keys(&["a3"]), "{}: a2 died", b.name);

    // b1's lease ends at T0 + 1000 unfinished: b1 is due again, and b2 still waits.
    assert_eq!(b.take_keys(route, T0 + 2_000, 10, 7).await, keys(&["b1", "a3"]), "{}", b.name);
    assert!(b.finish(&b1, 7, completed(), T0 + 2_100).await);
    assert_eq!(b.take_keys(route, T0 + 2_100, 10, 8).await, keys(&["b2"]), "{}", b.name);
}

/// Only the token of the current lease ends an attempt, and only once.
async fn only_the_leasing_token_ends_an_attempt(b: &Backend) {
    let (route, e) = ("fence", id("fence", "e"));
    b.queued(route, "e", None, T0).await;
    assert!(!b.finish(&e, 1, completed(), T0).await, "{}: not delivering", b.name);
    assert_eq!(b.take_keys(route, T0, 10, 7).await, keys(&["e"]));
    let leased = b.event(&e).await;
    assert!(!b.finish(&e, 8, completed(), T0 + 10).await, "{}: another token", b.name);
    assert_eq!(b.event(&e).await, leased, "{}: the refused end changed it", b.name);
    assert!(b.finish(&e, 7, completed(), T0 + 10).await, "{}", b.name);
    assert!(!b.finish(&e, 7, dead(500), T0 + 20).await, "{}: completion is final", b.name);
    assert!(!b.finish(&id(route, "unknown"), 7, completed(), T0 + 20).await, "{}", b.name);
}

/// A completed event keeps the app's response, byte for byte, and its status as the last one.
async fn a_completed_event_keeps_the_response(b: &Backend) {
    let route = "completed";
    for key in ["full", "omitted"] {
        b.queued(route, key, None, T0).await;
    }
    assert_eq!(b.take(route, T0, 10, 1).await.len(), 2);
    assert!(b.finish(&id(route, "full"), 1, completed(), T0 + 10).await);
    let omitted = StoredResponse { status: 200, headers: vec![], body: Bytes::new(), body_omitted: true };
    assert!(b.finish(&id(route, "omitted"), 1, Attempted::Completed(omitted.clone()), T0 + 10).await);

    let done = b.event(&id(route, "full")).await.expect("kept");
    assert_eq!(done.state, EventState::Completed, "{}", b.name);
    assert_eq!(done.response, Some(response()), "{}: the response, byte for byte", b.name);
    assert_eq!((done.last_status, done.last_error), (Some(201), None), "{}", b.name);
    assert_eq!((done.attempts, done.request), (1, request("full")), "{}", b.name);
    let done = b.event(&id(route, "omitted")).await.expect("kept");
    assert_eq!(done.response, Some(omitted), "{}: an omitted body stays omitted", b.name);
    assert!(b.take(route, FAR, 10, 2).await.is_empty(), "{}: completed events are never due", b.name);
}

/// A retry queues the event for its next attempt and keeps how the last one ended, status and
/// error as given (either may be absent).
async fn a_retry_waits_for_its_time_and_keeps_the_last_outcome(b: &Backend) {
    let (route, e) = ("retry", id("retry", "e"));
    b.queued(route, "e", None, T0).await;
    assert_eq!(b.take(route, T0, 10, 1).await.len(), 1);
    let retry = Attempted::Retry { next_attempt_ms: T0 + 5_000, status: Some(503), error: None };
    assert!(b.finish(&e, 1, retry, T0 + 10).await);
    let waiting = b.event(&e).await.expect("kept");
    assert_eq!((waiting.state, waiting.next_attempt_ms), (EventState::Queued, T0 + 5_000), "{}", b.name);
    assert_eq!((waiting.last_status, waiting.last_error, waiting.attempts), (Some(503), None, 1), "{}", b.name);
    assert_eq!(waiting.response, None, "{}", b.name);

    assert!(b.take(route, T0 + 4_999, 10, 2).await.is_empty(), "{}: not due yet", b.name);
    let due = b.take(route, T0 + 5_000, 10, 3).await;
    assert_eq!(due.iter().map(|e| e.attempts).collect::<Vec<_>>(), [2], "{}", b.name);
    let error = Some("connection refused".to_string());
    let retry = Attempted::Retry { next_attempt_ms: T0 + 9_000, status: None, error: error.clone() };
    assert!(b.finish(&e, 3, retry, T0 + 5_010).await);
    let waiting = b.event(&e).await.expect("kept");
    assert_eq!((waiting.last_status, waiting.last_error), (None, error), "{}", b.name);
    assert_eq!(waiting.next_attempt_ms, T0 + 9_000, "{}", b.name);
}

/// Dead letters are listed oldest first; one retried is queued afresh (no attempts, a new
/// first-seen time) and keeps why it died; a forgotten event is gone, and its key is new again.
async fn dead_letters_are_listed_retried_and_forgotten(b: &Backend) {
    let route = "dead";
    b.queued(route, "d1", None, T0 + 20).await;
    b.queued(route, "d2", None, T0 + 10).await;
    b.queued(route, "d3", None, T0 + 10).await;
    assert_eq!(b.take(route, T0 + 100, 10, 1).await.len(), 3);
    for key in ["d1", "d2", "d3"] {
        let died = Attempted::Dead { status: Some(500), error: Some(format!("{key} failed")) };
        assert!(b.finish(&id(route, key), 1, died, T0 + 110).await);
    }
    let listed = |limit| async move {
        let letters = b.store.dead_letters(route, limit).await.unwrap();
        assert!(letters.iter().all(|e| e.state == EventState::Dead), "{}", b.name);
        letters.into_iter().map(|e| e.id.key).collect::<Vec<_>>()
    };
    assert_eq!(listed(10).await, keys(&["d2", "d3", "d1"]), "{}: by first seen, then arrival", b.name);
    assert_eq!(listed(2).await, keys(&["d2", "d3"]), "{}", b.name);
    assert!(b.take(route, FAR, 10, 2).await.is_empty(), "{}: dead letters are never due", b.name);

    let d2 = id(route, "d2");
    assert!(b.store.retry_dead(d2.clone(), T0 + 200).await.unwrap(), "{}", b.name);
    let requeued = b.event(&d2).await.expect("kept");
    assert_eq!(requeued.state, EventState::Queued, "{}", b.name);
    assert_eq!((requeued.attempts, requeued.first_seen_ms, requeued.next_attempt_ms), (0, T0 + 200, T0 + 200));
    assert_eq!((requeued.last_status, requeued.last_error.as_deref()), (Some(500), Some("d2 failed")));
    assert!(!b.store.retry_dead(d2.clone(), T0 + 300).await.unwrap(), "{}: no longer dead", b.name);
    assert!(!b.store.retry_dead(id(route, "unknown"), T0 + 300).await.unwrap(), "{}", b.name);
    assert_eq!(listed(10).await, keys(&["d3", "d1"]), "{}", b.name);
    let taken = b.take(route, T0 + 200, 10, 3).await;
    assert_eq!(taken.iter().map(|e| (e.id.key.as_str(), e.attempts)).collect::<Vec<_>>(), [("d2", 1)]);

    let d3 = id(route, "d3");
    assert!(!b.store.forget_dead(d2.clone()).await.unwrap(), "{}: retried, no longer a dead letter", b.name);
    assert!(b.event(&d2).await.is_some(), "{}: forget_dead left the retried event", b.name);
    let d1 = id(route, "d1");
    assert!(b.store.forget_dead(d1.clone()).await.unwrap(), "{}", b.name);
    assert_eq!(b.event(&d1).await, None, "{}", b.name);
    assert!(!b.store.forget_dead(d1.clone()).await.unwrap(), "{}: nothing left to forget", b.name);
    assert!(b.store.forget_event(d3.clone()).await.unwrap(), "{}", b.name);
    assert_eq!(b.event(&d3).await, None, "{}", b.name);
    assert!(!b.store.forget_event(d3.clone()).await.unwrap(), "{}: nothing left to forget", b.name);
    b.queued(route, "d3", None, T0 + 400).await;
    assert_eq!(b.event(&d3).await.map(|e| (e.state, e.attempts)), Some((EventState::Queued, 0)));
    assert!(b.store.forget_event(d2.clone()).await.unwrap(), "{}: a delivering event too", b.name);
    assert!(!b.finish(&d2, 3, completed(), T0 + 500).await, "{}: its delivery ends in nothing", b.name);
}

/// The gauges: waiting (queued or delivering) events, the oldest of them, and dead letters.
async fn queue_stats_count_waiting_and_dead_events(b: &Backend) {
    let route = "stats";
    assert_eq!(b.stats(route).await, QueueStats::default(), "{}: an empty route", b.name);
    b.queued(route, "s1", None, T0 + 5).await;
    b.queued(route, "s2", None, T0 + 1).await;
    b.queued(route, "s3", None, T0 + 9).await;
    assert_eq!(b.stats(route).await, QueueStats { depth: 3, oldest_ms: Some(T0 + 1), dead: 0 }, "{}", b.name);
    assert_eq!(b.take_keys(route, T0 + 10, 1, 1).await, keys(&["s1"]));
    assert_eq!(b.stats(route).await.depth, 3, "{}: delivering counts", b.name);
    assert!(b.finish(&id(route, "s1"), 1, dead(500), T0 + 20).await);
    assert_eq!(b.stats(route).await, QueueStats { depth: 2, oldest_ms: Some(T0 + 1), dead: 1 }, "{}", b.name);
    assert_eq!(b.take_keys(route, T0 + 30, 1, 2).await, keys(&["s2"]));
    assert!(b.finish(&id(route, "s2"), 2, completed(), T0 + 40).await);
    assert_eq!(b.stats(route).await, QueueStats { depth: 1, oldest_ms: Some(T0 + 9), dead: 1 }, "{}", b.name);
}

/// The sweep deletes completed and dead events whose ttl ended, after expired records, within
/// one budget; queued and delivering events stay however old.
async fn sweep_removes_expired_finished_events_only(b: &Backend) {
    let route = "sweep";
    let expiring = |key: &str| NewEvent { expires_ms: T0 + 10, ..new_event(id(route, key), None, T0) };
    for key in ["done", "died", "waiting", "delivering"] {
        assert_eq!(b.enqueue(expiring(key)).await, Enqueued::Queued);
    }
    b.queued(route, "kept", None, T0).await;
    assert_eq!(b.take(route, T0, 3, 1).await.len(), 3);
    assert!(b.finish(&id(route, "done"), 1, completed(), T0 + 1).await);
    assert!(b.finish(&id(route, "died"), 1, dead(500), T0 + 1).await);
    assert_eq!(b.take(route, T0 + 1, 2, 2).await.len(), 2);
    assert!(b.finish(&id(route, "kept"), 2, completed(), T0 + 2).await);

    let record = id(route, "record");
    b.store
        .claim(Claim { id: record.clone(), token: 9, fingerprint: None, now_ms: T0, lease_ms: LEASE })
        .await
        .unwrap();
    let done = Arc::new(Completed { fingerprint: None, response: response(), created_ms: T0, expires_ms: T0 + 10 });
    assert!(b.store.complete(record.clone(), 9, done).await.unwrap());

    let at = T0 + 100;
    assert_eq!(b.store.sweep(at, 2).await.unwrap(), 2, "{}: the record and one event", b.name);
    assert_eq!(b.store.sweep(at, 10).await.unwrap(), 1, "{}: the other event", b.name);
    assert_eq!(b.store.sweep(at, 10).await.unwrap(), 0, "{}", b.name);
    assert!(b.store.get(record).await.unwrap().is_none(), "{}", b.name);
    for key in ["done", "died"] {
        assert_eq!(b.event(&id(route, key)).await, None, "{}: {key} was not swept", b.name);
    }
    for key in ["waiting", "delivering", "kept"] {
        assert!(b.event(&id(route, key)).await.is_some(), "{}: {key} was swept", b.name);
    }
}

/// Four takers (over as many stores as given: two PostgreSQL stores are two replicas) poll
/// 200 events at once: every event is leased exactly once.
async fn concurrent_takers_never_lease_an_event_twice(b: &Backend, stores: &[Arc<dyn Store>]) {
    let route = "storm";
    for i in 0..200 {
        b.queued(route, &format!("e{i:03}"), None, T0).await;
    }
    let takers: Vec<_> = (0..4u64)
        .map(|taker| {
            let store = stores[taker as usize % stores.len()].clone();
            tokio::spawn(async move {
                let mut leased = Vec::new();
                loop {
                    let taken = store.take_due(route, T0 + 1, 7, taker + 1, FAR).await.unwrap();
                    if taken.is_empty() {
                        return leased;
                    }
                    leased.extend(taken.into_iter().map(|e| e.id.key));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for taker in takers {
        all.extend(taker.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (200, 200), "{}: some event was leased twice or never", b.name);
    assert!(b.take(route, T0 + 2, 10, 9).await.is_empty(), "{}", b.name);
}

/// Four takers deliver 100 events over 5 order keys at once, each completing what it took: no two
/// events of one key are ever out together, and each key's events go in arrival order.
async fn concurrent_takers_keep_each_order_key_one_at_a_time(b: &Backend, stores: &[Arc<dyn Store>]) {
    const EVENTS: usize = 100;
    let route = "storm-ordered";
    for i in 0..EVENTS {
        b.queued(route, &format!("e{i:03}"), Some(&format!("k{}", i % 5)), T0).await;
    }
    let out: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let delivered: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let takers: Vec<_> = (0..4u64)
        .map(|taker| {
            let store = stores[taker as usize % stores.len()].clone();
            let (out, delivered, done) = (out.clone(), delivered.clone(), done.clone());
            tokio::spawn(async move {
                let token = taker + 1;
                for _ in 0..100_000 {
                    if done.load(Ordering::Acquire) == EVENTS {
                        return;
                    }
                    let taken = store.take_due(route, T0 + 1, 3, token, FAR).await.unwrap();
                    if taken.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    for event in taken {
                        let key = event.order_key.clone().unwrap();
                        if let Some(other) = out.lock().unwrap().insert(key.clone(), event.id.key.clone()) {
                            panic!("{} and {} of {key} are out together", other, event.id.key);
                        }
                        delivered.lock().unwrap().entry(key.clone()).or_default().push(event.id.key.clone());
                        tokio::task::yield_now().await;
                        // Back before the completion commits: only then may the next one go.
                        out.lock().unwrap().remove(&key);
                        assert!(store.finish_attempt(event.id, token, completed()).await.unwrap());
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                }
                panic!("the takers did not deliver every event");
            })
        })
        .collect();
    for taker in takers {
        taker.await.unwrap();
    }
    let delivered = delivered.lock().unwrap();
    for k in 0..5 {
        let expected: Vec<_> = (0..EVENTS).filter(|i| i % 5 == k).map(|i| format!("e{i:03}")).collect();
        assert_eq!(delivered[&format!("k{k}")], expected, "{}: k{k} out of order", b.name);
    }
}

async fn suite(b: &Backend) {
    a_duplicate_in_any_state_changes_nothing(b).await;
    a_full_queue_refuses_new_keys_and_only_waiting_events_count(b).await;
    take_due_leases_due_events_in_arrival_order(b).await;
    events_sharing_an_order_key_go_one_at_a_time(b).await;
    only_the_leasing_token_ends_an_attempt(b).await;
    a_completed_event_keeps_the_response(b).await;
    a_retry_waits_for_its_time_and_keeps_the_last_outcome(b).await;
    dead_letters_are_listed_retried_and_forgotten(b).await;
    queue_stats_count_waiting_and_dead_events(b).await;
    sweep_removes_expired_finished_events_only(b).await;
    assert!(b.store.supports_queue(), "{}", b.name);
}

async fn concurrency(b: &Backend, stores: &[Arc<dyn Store>]) {
    concurrent_takers_never_lease_an_event_twice(b, stores).await;
    concurrent_takers_keep_each_order_key_one_at_a_time(b, stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_the_inbox() {
    let (b, ..) = sqlite();
    suite(&b).await;
    concurrency(&b, std::slice::from_ref(&b.store)).await;
    b.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_the_inbox() {
    if let Some((b, _)) = postgres(false).await {
        suite(&b).await;
        concurrency(&b, std::slice::from_ref(&b.store)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_with_prepared_statements_keeps_the_inbox() {
    if let Some((b, _)) = postgres(true).await {
        suite(&b).await;
        concurrency(&b, std::slice::from_ref(&b.store)).await;
    }
}

/// Two stores on one schema are two replicas: they share the events, never a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_share_the_inbox_and_never_a_lease() {
    if let Some((b, url)) = postgres(false).await {
        let replica = open_postgres(&url, true).await;
        concurrency(&b, &[b.store.clone(), replica]).await;
    }
}

/// An event still delivering when the process stopped is due again as soon as the store is
/// opened again, its lease notwithstanding; nothing else changes.
#[tokio::test]
async fn sqlite_delivers_an_interrupted_event_again_at_once_after_a_restart() {
    let (b, _, path) = sqlite();
    let now = now_ms();
    for key in ["interrupted", "done"] {
        b.queued("restart", key, None, now).await;
    }
    b.queued("restart", "later", None, now + 3_600_000).await;
    let leased = b.store.take_due("restart", now, 10, 1, 3_600_000).await.unwrap();
    assert_eq!(leased.len(), 2);
    assert!(b.finish(&id("restart", "done"), 1, completed(), now).await);
    b.store.close().await.unwrap();

    let store = SqliteStore::open(&path).unwrap();
    let again = store.take_due("restart", now, 10, 2, 3_600_000).await.unwrap();
    let again: Vec<_> = again.iter().map(|e| (e.id.key.as_str(), e.state, e.attempts)).collect();
    assert_eq!(again, [("interrupted", EventState::Delivering, 2)]);
    assert_eq!(store.event(id("restart", "done")).await.unwrap().map(|e| e.state), Some(EventState::Completed));
    store.close().await.unwrap();
}

/// The sender is acknowledged on an enqueue's answer, so it comes only after the WAL sync that
/// covers it; so does a duplicate's, which may be all a concurrent sender of the same key hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_answers_an_enqueue_only_once_synced() {
    let (b, store, _) = sqlite();
    for i in 0..100u64 {
        assert_eq!(b.enqueue(new_event(id("synced", &format!("e{i}")), None, T0)).await, Enqueued::Queued);
        // Nothing else commits here: this enqueue's transaction is the (i+1)-th.
        let (committed, synced) = store.sync_progress();
        assert!(synced > i, "answered before its sync ({synced}/{committed})");
    }
    for i in 0..100 {
        let pair = [0, 1].map(|_| {
            let (store, event) = (store.clone(), new_event(id("racing", &format!("e{i}")), None, T0));
            tokio::spawn(async move {
                let enqueued = store.enqueue(event).await.unwrap();
                (enqueued, store.sync_progress())
            })
        });
        for answer in pair {
            let (enqueued, (committed, synced)) = answer.await.unwrap();
            // The first one's transaction committed before the duplicate found it, and neither
            // commits anything after that.
            if enqueued == Enqueued::Duplicate(EventState::Queued) {
                assert_eq!(synced, committed, "a duplicate answered before the sync");
            }
        }
    }
    b.store.close().await.unwrap();
}

/// Another replica's take that has locked (and even leased) an event but not committed yet:
/// `SKIP LOCKED` passes over that event, but it still holds back the later events of its order
/// key, as a committed lease would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_event_another_replica_is_leasing_holds_back_its_successors() {
    let Some((b, url)) = postgres(false).await else { return };
    let route = "locked";
    b.queued(route, "a1", Some("a"), T0).await;
    b.queued(route, "a2", Some("a"), T0).await;
    b.queued(route, "b1", Some("b"), T0).await;
    let (mut other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let leasing = other.transaction().await.unwrap();
    let lock = "SELECT seq FROM idemgate_events WHERE key = 'a1' FOR UPDATE";
    assert_eq!(leasing.query(lock, &[]).await.unwrap().len(), 1);
    assert_eq!(b.take_keys(route, T0, 10, 1).await, keys(&["b1"]), "a1 locked while queued");
    let lease = "UPDATE idemgate_events SET state = 1, token = 99, lease_until_ms = $1 WHERE key = 'a1'";
    assert_eq!(leasing.execute(lease, &[&FAR]).await.unwrap(), 1);
    assert!(b.take(route, T0, 10, 2).await.is_empty(), "a1 leased, not committed");
    leasing.rollback().await.unwrap();
    assert_eq!(b.take_keys(route, T0, 10, 3).await, keys(&["a1"]), "the other take gave up: a1 is ours, a2 waits");
}
