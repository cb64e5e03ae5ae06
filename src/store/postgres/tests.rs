//! Against a real server named by `IDEMGATE_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); without it those tests say they were skipped. Keys
//! carry a random prefix, so parallel tests and reruns never meet; the tests that count rows or
//! migrate get a schema of their own. The unreachable-server tests need no server.

use super::*;
use crate::config::Dur;
use crate::store::{State, StoredResponse, now_ms};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

const LEASE: i64 = 60_000;

fn test_url() -> Option<String> {
    std::env::var("IDEMGATE_TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty())
}

macro_rules! url_or_skip {
    () => {
        match test_url() {
            Some(url) => url,
            None => {
                println!("skipped: IDEMGATE_TEST_POSTGRES_URL not set");
                return;
            }
        }
    };
}

fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::hash::RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id()))
}

fn config(url: &str, timeout: Duration) -> PostgresConfig {
    PostgresConfig { url: url.to_string(), pool_size: 16, timeout: Dur(timeout), prepared_statements: false }
}

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(&config(url, Duration::from_secs(10))).await.expect("open the postgres store")
}

async fn open_prepared(url: &str) -> PostgresStore {
    let cfg = PostgresConfig { prepared_statements: true, ..config(url, Duration::from_secs(10)) };
    PostgresStore::open(&cfg).await.expect("open the postgres store")
}

/// A fresh id under a prefix no other test or run uses.
fn id(route: &str, scope: &str, key: &str) -> RecordId {
    RecordId { route: Arc::from(route), scope: scope.to_string(), key: format!("{:016x}-{key}", random()) }
}

fn claim(id: &RecordId, token: u64, now_ms: i64, lease_ms: i64) -> Claim {
    Claim { id: id.clone(), token, fingerprint: None, now_ms, lease_ms }
}

fn response(status: u16) -> StoredResponse {
    StoredResponse { status, headers: vec![], body: Bytes::from_static(b"ok"), body_omitted: false }
}

fn completed(created_ms: i64, expires_ms: i64, response: StoredResponse) -> Arc<Completed> {
    Arc::new(Completed { fingerprint: None, response, created_ms, expires_ms })
}

/// A schema of its own, dropped with the guard (also when the test fails), and a url whose
/// connections use it; None, after saying so, where the server refuses the `options` startup
/// parameter (pgbouncer does).
async fn isolated(url: &str) -> Option<(String, Schema)> {
    let name = format!("idemgate_test_{:016x}", random());
    let url_in_schema = with_options(url, &format!("-c search_path={name}"))?;
    admin(url, &format!("CREATE SCHEMA {name}")).await;
    Some((url_in_schema, Schema { url: url.to_string(), name }))
}

struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, sql) = (self.url.clone(), format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(admin(&url, &sql));
        })
        .join();
    }
}

/// The url with startup `options`, if the server accepts them.
fn with_options(url: &str, options: &str) -> Option<String> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let encoded = options.replace(' ', "%20").replace('=', "%3D");
    let with = format!("{url}{separator}options={encoded}");
    let accepted = std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                match tokio_postgres::connect(&with, NoTls).await {
                    Ok(_) => true,
                    Err(e) => !sql::describe(&e).contains("startup parameter"),
                }
            })
        })
        .join()
        .unwrap()
    });
    if !accepted {
        println!("skipped: the server refuses the `options` startup parameter (pgbouncer?)");
    }
    accepted.then_some(with)
}

async fn admin(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = task.await;
}

async fn count(url: &str, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let task = tokio::spawn(connection);
    let n = client.query_typed_one(sql, &[]).await.expect(sql).get(0);
    drop(client);
    let _ = task.await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_key_across_two_replicas_yield_one_claimed() {
    let url = url_or_skip!();
    // One replica prepares its statements, the other does not (as during a rolling change).
    let replicas = [open(&url).await, open_prepared(&url).await];
    let key = id("hooks", "", "contended");
    let now = now_ms();
    let base = random();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let store = replicas[i as usize % 2].clone();
            let claim = claim(&key, base.wrapping_add(i), now, LEASE);
            tokio::spawn(async move { store.claim(claim).await })
        })
        .collect();
    let mut winners = vec![];
    for task in tasks {
        match task.await.unwrap().expect("claim") {
            ClaimOutcome::Claimed { token, .. } => winners.push(token),
            ClaimOutcome::InFlight { fingerprint, expires_ms } => {
                assert_eq!(fingerprint, None);
                assert_eq!(expires_ms, now + LEASE);
            }
            ClaimOutcome::Completed(_) => panic!("nothing completed the key"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    let record = replicas[0].get(key.clone()).await.unwrap().expect("the record");
    assert_eq!(record.state, State::InFlight);
    assert!(replicas[1].complete(key, winners[0], completed(now, now + 1000, response(200))).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_keys_are_all_claimed() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let now = now_ms();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let claim = claim(&id("hooks", "", &format!("k{i}")), random(), now, LEASE);
            tokio::spawn(async move { (claim.token, store.claim(claim).await) })
        })
        .collect();
    for task in tasks {
        let (token, outcome) = task.await.unwrap();
        assert!(matches!(outcome.expect("claim"), ClaimOutcome::Claimed { token: t, .. } if t == token));
    }
}

#[tokio::test]
async fn the_claim_token_fences_complete_and_release() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let key = id("hooks", "", "fenced");
    let t0 = now_ms();
    let (a, b) = (random(), random());
    assert!(matches!(
        store.claim(claim(&key, a, t0, 1000)).await.unwrap(),
        ClaimOutcome::Claimed { token, took_over: false } if token == a
    ));
    // Another token can neither complete nor release it.
    assert!(!store.complete(key.clone(), b, completed(t0, t0 + LEASE, response(200))).await.unwrap());
    store.release(key.clone(), b).await.unwrap();
    assert_eq!(store.get(key.clone()).await.unwrap().expect("still held").state, State::InFlight);
    // Within the lease the key is held; once it ends, another claim takes it over.
    match store.claim(claim(&key, b, t0 + 999, 1000)).await.unwrap() {
        ClaimOutcome::InFlight { expires_ms, .. } => assert_eq!(expires_ms, t0 + 1000),
        other => panic!("expected in flight, got {other:?}"),
    }
    // The takeover of an unfinished claim says so: the app may see this key a second time.
    assert!(matches!(
        store.claim(claim(&key, b, t0 + 1000, 1000)).await.unwrap(),
        ClaimOutcome::Claimed { token, took_over: true } if token == b
    ));
    // The paused first owner comes back: its completion and release are refused.
    assert!(!store.complete(key.clone(), a, completed(t0, t0 + LEASE, response(200))).await.unwrap());
    store.release(key.clone(), a).await.unwrap();
    let record = store.get(key.clone()).await.unwrap().expect("b's record");
    assert_eq!((record.state, record.created_ms, record.expires_ms), (State::InFlight, t0 + 1000, t0 + 2000));
    assert!(store.complete(key.clone(), b, completed(t0 + 1000, t0 + LEASE, response(201))).await.unwrap());
    // A completed record is not completed twice, and release leaves it alone.
    assert!(!store.complete(key.clone(), b, completed(t0 + 1000, t0 + LEASE, response(202))).await.unwrap());
    store.release(key.clone(), b).await.unwrap();
    let record = store.get(key.clone()).await.unwrap().expect("completed");
    assert_eq!((record.state, record.status, record.expires_ms), (State::Completed, Some(201), t0 + LEASE));
    // Released by its owner, the key is free at once.
    let other = id("hooks", "", "released");
    assert!(matches!(store.claim(claim(&other, a, t0, LEASE)).await.unwrap(), ClaimOutcome::Claimed { .. }));
    store.release(other.clone(), a).await.unwrap();
    assert!(store.get(other.clone()).await.unwrap().is_none());
    assert!(
        matches!(store.claim(claim(&other, b, t0, LEASE)).await.unwrap(), ClaimOutcome::Claimed { token, .. } if token == b)
    );
}

#[tokio::test]
async fn a_completed_record_round_trips_byte_exact() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let t0 = now_ms();
    let body: Vec<u8> = (0..=255u8).chain([0, b'\n', b'\r', 0xff]).collect();
    let fingerprint: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x80);
    let headers = vec![
        (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json; charset=utf-8")),
        (HeaderName::from_static("set-cookie"), HeaderValue::from_static("a=1; Path=/")),
        (HeaderName::from_static("x-empty"), HeaderValue::from_static("")),
        (HeaderName::from_static("set-cookie"), HeaderValue::from_static("b=2: with colon")),
        (HeaderName::from_static("x-opaque"), HeaderValue::from_bytes(b"caf\xc3\xa9 \x80\xfe").unwrap()),
    ];
    let cases = [
        (Some(fingerprint), StoredResponse { status: 201, headers, body: Bytes::from(body), body_omitted: false }),
        (None, StoredResponse { status: 299, headers: vec![], body: Bytes::new(), body_omitted: true }),
    ];
    for (fingerprint, response) in cases {
        let key = id("api", "2f1c0ffee", "round-trip");
        let token = random();
        let mut first = claim(&key, token, t0, LEASE);
        first.fingerprint = fingerprint;
        assert!(matches!(store.claim(first).await.unwrap(), ClaimOutcome::Claimed { .. }));
        let done = Completed { fingerprint, response, created_ms: t0, expires_ms: t0 + 7 * 86_400_000 };
        assert!(store.complete(key.clone(), token, Arc::new(done.clone())).await.unwrap());
        let replay = store.claim(claim(&key, random(), t0 + 5, LEASE)).await.unwrap();
        match replay {
            ClaimOutcome::Completed(stored) => assert_eq!(*stored, done),
            other => panic!("expected the completed record, got {other:?}"),
        }
        let record = store.get(key).await.unwrap().unwrap();
        assert_eq!(
            (record.state, record.status, record.created_ms),
            (State::Completed, Some(done.response.status), t0)
        );
    }
    // The fingerprint of an in-flight claim is reported to duplicates.
    let key = id("api", "", "in-flight-fingerprint");
    let mut first = claim(&key, random(), t0, LEASE);
    first.fingerprint = Some(fingerprint);
    store.claim(first).await.unwrap();
    match store.claim(claim(&key, random(), t0, LEASE)).await.unwrap() {
        ClaimOutcome::InFlight { fingerprint: seen, .. } => assert_eq!(seen, Some(fingerprint)),
        other => panic!("expected in flight, got {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_record_is_taken_over_as_new() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let key = id("hooks", "", "expiring");
    let t0 = now_ms();
    let (a, b) = (random(), random());
    store.claim(claim(&key, a, t0, LEASE)).await.unwrap();
    assert!(store.complete(key.clone(), a, completed(t0, t0 + 100, response(200))).await.unwrap());
    assert!(matches!(store.claim(claim(&key, b, t0 + 99, LEASE)).await.unwrap(), ClaimOutcome::Completed(_)));
    assert!(
        matches!(store.claim(claim(&key, b, t0 + 100, LEASE)).await.unwrap(), ClaimOutcome::Claimed { token, .. } if token == b)
    );
    let record = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.status, record.created_ms, record.expires_ms),
        (State::InFlight, None, t0 + 100, t0 + 100 + LEASE)
    );
    // The old response is gone with the takeover: the new owner completes afresh.
    assert!(!store.complete(key.clone(), a, completed(t0, t0 + LEASE, response(200))).await.unwrap());
    assert!(store.complete(key.clone(), b, completed(t0 + 100, t0 + LEASE, response(204))).await.unwrap());
    match store.claim(claim(&key, random(), t0 + 200, LEASE)).await.unwrap() {
        ClaimOutcome::Completed(done) => assert_eq!((done.response.status, &done.response.body[..]), (204, &b"ok"[..])),
        other => panic!("expected completed, got {other:?}"),
    }
}

#[tokio::test]
async fn records_are_scoped_by_route_and_scope() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let t0 = now_ms();
    let base = id("hooks", "", "scoped");
    let ids = [
        base.clone(),
        RecordId { scope: "aa".into(), ..base.clone() },
        RecordId { scope: "bb".into(), ..base.clone() },
        RecordId { route: Arc::from("other"), ..base.clone() },
    ];
    for id in &ids {
        assert!(matches!(store.claim(claim(id, random(), t0, LEASE)).await.unwrap(), ClaimOutcome::Claimed { .. }));
    }
    assert!(store.delete(ids[1].clone()).await.unwrap());
    assert!(store.get(ids[0].clone()).await.unwrap().is_some());
    assert!(store.get(ids[2].clone()).await.unwrap().is_some());
}

#[tokio::test]
async fn get_and_delete() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let key = id("hooks", "", "admin");
    let t0 = now_ms();
    assert!(store.get(key.clone()).await.unwrap().is_none());
    assert!(!store.delete(key.clone()).await.unwrap());
    let a = random();
    store.claim(claim(&key, a, t0, LEASE)).await.unwrap();
    let record = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.status, record.created_ms, record.expires_ms),
        (State::InFlight, None, t0, t0 + LEASE)
    );
    assert!(store.delete(key.clone()).await.unwrap());
    assert!(!store.delete(key.clone()).await.unwrap());
    assert!(store.get(key.clone()).await.unwrap().is_none());
    // Forgotten: the next delivery claims it, and the deleted claim's completion is refused.
    let b = random();
    assert!(matches!(store.claim(claim(&key, b, t0 + 1, LEASE)).await.unwrap(), ClaimOutcome::Claimed { .. }));
    assert!(!store.complete(key.clone(), a, completed(t0, t0 + LEASE, response(200))).await.unwrap());
    assert!(store.complete(key.clone(), b, completed(t0, t0 + LEASE, response(200))).await.unwrap());
    assert!(store.delete(key.clone()).await.unwrap());
}

#[tokio::test]
async fn sweep_deletes_expired_records_in_batches() {
    let url = url_or_skip!();
    let Some((url_in_schema, _schema)) = isolated(&url).await else { return };
    let store = open(&url_in_schema).await;
    let t0 = now_ms();
    for i in 0..25 {
        let key = id("hooks", "", &format!("old{i}"));
        let token = random();
        store.claim(claim(&key, token, t0 - 10_000, 1000)).await.unwrap();
        if i % 2 == 0 {
            assert!(store.complete(key, token, completed(t0 - 10_000, t0 - i, response(200))).await.unwrap());
        }
    }
    let mut live = vec![];
    for i in 0..5 {
        let key = id("hooks", "", &format!("live{i}"));
        store.claim(claim(&key, random(), t0, LEASE)).await.unwrap();
        live.push(key);
    }
    // The 13 expired completed records go; the 12 abandoned claims stay for their retention.
    assert_eq!(store.sweep(t0, 10).await.unwrap(), 10);
    assert_eq!(store.sweep(t0, 10).await.unwrap(), 3);
    assert_eq!(store.sweep(t0, 10).await.unwrap(), 0);
    for key in live {
        assert!(store.get(key).await.unwrap().is_some(), "a live record was swept");
    }
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_records").await, 17);
    assert_eq!(store.sweep(t0 + LEASE, 1000).await.unwrap(), 0, "abandoned claims are kept a while");
    let after_retention = t0 + LEASE + crate::store::ABANDONED_CLAIM_RETENTION_MS;
    assert_eq!(store.sweep(after_retention, 1000).await.unwrap(), 17);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_migrate_once() {
    let url = url_or_skip!();
    let Some((url_in_schema, _schema)) = isolated(&url).await else { return };
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url_in_schema.clone();
            tokio::spawn(async move { PostgresStore::open(&config(&url, Duration::from_secs(10))).await })
        })
        .collect();
    for open in opens {
        let store = open.await.unwrap().expect("open");
        store.check_writable().await.expect("writable");
    }
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_schema").await, 1);
    assert_eq!(count(&url_in_schema, "SELECT max(version)::bigint FROM idemgate_schema").await, 3);
    // A schema from a newer idemgate is refused rather than used.
    admin(&url_in_schema, "UPDATE idemgate_schema SET version = 99").await;
    match PostgresStore::open(&config(&url_in_schema, Duration::from_secs(10))).await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("newer"), "{message}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_version_1_schema_gains_the_versions_table_and_keeps_its_records() {
    let url = url_or_skip!();
    let Some((url_in_schema, _schema)) = isolated(&url).await else { return };
    let expires_ms = now_ms() + LEASE;
    admin(
        &url_in_schema,
        &format!(
            "{}
             CREATE TABLE idemgate_schema (version integer NOT NULL);
             INSERT INTO idemgate_schema (version) VALUES (1);
             INSERT INTO idemgate_records (route, scope, key, state, token, created_ms, expires_ms, status)
                 VALUES ('hooks', '', 'old', 1, 9, 0, {expires_ms}, 202);",
            sql::SCHEMA_V1
        ),
    )
    .await;
    let store = open(&url_in_schema).await;
    let old = RecordId { route: "hooks".into(), scope: String::new(), key: "old".into() };
    let record = store.get(old).await.unwrap().expect("the version-1 record is kept");
    assert_eq!((record.state, record.status), (State::Completed, Some(202)));
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_schema").await, 1);
    assert_eq!(count(&url_in_schema, "SELECT max(version)::bigint FROM idemgate_schema").await, 3);
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_versions").await, 0);
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_events").await, 0);
}

#[tokio::test]
async fn a_version_2_schema_gains_the_events_table_and_keeps_its_records_and_versions() {
    let url = url_or_skip!();
    let Some((url_in_schema, _schema)) = isolated(&url).await else { return };
    let expires_ms = now_ms() + LEASE;
    let seven = crate::version::Version::parse("7").unwrap();
    admin(
        &url_in_schema,
        &format!(
            "{}{}
             CREATE TABLE idemgate_schema (version integer NOT NULL);
             INSERT INTO idemgate_schema (version) VALUES (2);
             INSERT INTO idemgate_records (route, scope, key, state, token, created_ms, expires_ms, status)
                 VALUES ('hooks', '', 'old', 1, 9, 0, {expires_ms}, 202);
             INSERT INTO idemgate_versions VALUES ('hooks', '', 'cus_1', '{seven}', {expires_ms});",
            sql::SCHEMA_V1,
            sql::SCHEMA_V2,
            seven = seven.encoded()
        ),
    )
    .await;
    let store = open(&url_in_schema).await;
    let old = RecordId { route: "hooks".into(), scope: String::new(), key: "old".into() };
    let record = store.get(old).await.unwrap().expect("the version-2 record is kept");
    assert_eq!((record.state, record.status), (State::Completed, Some(202)));
    let entity = RecordId { route: "hooks".into(), scope: String::new(), key: "cus_1".into() };
    assert_eq!(store.version(entity).await.unwrap(), Some(seven), "the version-2 entity version is kept");
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_schema").await, 1);
    assert_eq!(count(&url_in_schema, "SELECT max(version)::bigint FROM idemgate_schema").await, 3);
    assert_eq!(count(&url_in_schema, "SELECT count(*) FROM idemgate_events").await, 0);
    assert_eq!(store.queue_stats("hooks").await.unwrap(), crate::store::queue::QueueStats::default());
}

#[tokio::test]
async fn check_writable_and_close() {
    let url = url_or_skip!();
    let store = open(&url).await;
    store.check_writable().await.expect("writable");
    store.close().await.unwrap();
    assert!(matches!(store.check_writable().await, Err(StoreError::Closed)));
    assert!(matches!(store.get(id("hooks", "", "closed")).await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn a_read_only_server_is_not_writable() {
    let url = url_or_skip!();
    let store = open(&url).await;
    let Some(read_only) = with_options(&url, "-c default_transaction_read_only=on") else { return };
    let store_ro = PostgresStore::open(&config(&read_only, Duration::from_secs(10))).await;
    // The schema exists already (created by `store`), so opening reads only.
    let store_ro = store_ro.expect("open read-only");
    match store_ro.check_writable().await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("read-only transaction"), "{message}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(matches!(
        store_ro.claim(claim(&id("hooks", "", "ro"), 1, now_ms(), LEASE)).await,
        Err(StoreError::Unavailable(_))
    ));
    store.check_writable().await.expect("the normal store stays writable");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_promptly() {
    let start = Instant::now();
    let result = PostgresStore::open(&config("postgres://postgres@127.0.0.1:1/test", Duration::from_secs(2))).await;
    match result {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("refused"), "{message}"),
        other => panic!("expected unavailable, got {:?}", other.map(|_| ())),
    }
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    let result = PostgresStore::open(&config("postgres://", Duration::from_secs(2))).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))));
    let result = PostgresStore::open(&config("not a url=", Duration::from_secs(2))).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))));
}

#[tokio::test]
async fn a_silent_server_is_unavailable_within_the_timeout() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = vec![];
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let url = format!("postgres://postgres@{addr}/test");
    let start = Instant::now();
    let result = PostgresStore::open(&config(&url, Duration::from_millis(500))).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{:?}", result.err());
    assert!(start.elapsed() < Duration::from_millis(1500), "took {:?}", start.elapsed());
    held.abort();
}

/// A TCP proxy in front of the server that can cut every connection (as a restart does) or go
/// silent (as a partition does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Up,
    Down,
    Silent,
}

struct Proxy {
    addr: std::net::SocketAddr,
    link: tokio::sync::watch::Sender<Link>,
    silenced: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, watch) = tokio::sync::watch::channel(Link::Up);
        let silenced = Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = silenced.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let state = *watch.borrow();
                match state {
                    Link::Down => drop(client),
                    Link::Silent => held.lock().unwrap().push(client),
                    Link::Up => {
                        let mut watch = watch.clone();
                        let held = held.clone();
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                            let changed = async {
                                loop {
                                    if watch.changed().await.is_err() {
                                        return Link::Down;
                                    }
                                    let link = *watch.borrow();
                                    if link != Link::Up {
                                        return link;
                                    }
                                }
                            };
                            let link = tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => Link::Down,
                                link = changed => link,
                            };
                            if link == Link::Silent {
                                held.lock().unwrap().push(client);
                            }
                        });
                    }
                }
            }
        });
        Proxy { addr, link, silenced, accept }
    }

    fn set(&self, link: Link) {
        if link == Link::Up {
            // The partition heals: the silenced sockets are reset.
            self.silenced.lock().unwrap().clear();
        }
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_by_itself_after_an_outage() {
    let url = url_or_skip!();
    recovers_after_an_outage(&url, false).await;
}

/// With prepared statements, the connections that reconnect after the outage prepare theirs
/// afresh: the statements of the lost ones died with them on the server, and so did their cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_by_itself_after_an_outage_with_prepared_statements() {
    let url = url_or_skip!();
    recovers_after_an_outage(&url, true).await;
}

async fn recovers_after_an_outage(url: &str, prepared_statements: bool) {
    let server: tokio_postgres::Config = url.parse().unwrap();
    let host = match &server.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[allow(unreachable_patterns)]
        _ => {
            println!("skipped: the outage test needs a TCP server url");
            return;
        }
    };
    let port = server.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let user = server.get_user().unwrap_or("postgres");
    let dbname = server.get_dbname().unwrap_or("test");
    let via_proxy = format!("postgres://{user}@{}/{dbname}", proxy.addr);
    let timeout = Duration::from_millis(700);
    let cfg = PostgresConfig { prepared_statements, ..config(&via_proxy, timeout) };
    let store = PostgresStore::open(&cfg).await.expect("open through the proxy");
    let key = id("hooks", "", "outage");
    let t0 = now_ms();
    let token = random();
    assert!(matches!(store.claim(claim(&key, token, t0, LEASE)).await.unwrap(), ClaimOutcome::Claimed { .. }));

    // The server goes away (every connection cut, new ones refused): prompt 503s.
    proxy.set(Link::Down);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let start = Instant::now();
        assert!(matches!(store.get(key.clone()).await, Err(StoreError::Unavailable(_))));
        assert!(matches!(store.check_writable().await, Err(StoreError::Unavailable(_))));
        assert!(start.elapsed() < 2 * timeout + Duration::from_millis(500), "took {:?}", start.elapsed());
    }
    // It comes back: the very next operation works, on a new connection, without reopening.
    proxy.set(Link::Up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(store.complete(key.clone(), token, completed(t0, t0 + LEASE, response(200))).await.unwrap());
    store.check_writable().await.expect("writable again");

    // A partition: connections stay open and nothing answers. Each operation still ends at the
    // timeout, and the silent connection is not handed out again.
    proxy.set(Link::Silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let start = Instant::now();
        let result = store.claim(claim(&key, random(), t0 + 1, LEASE)).await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
        assert!(start.elapsed() < timeout + Duration::from_millis(500), "took {:?}", start.elapsed());
    }
    proxy.set(Link::Up);
    tokio::time::sleep(Duration::from_millis(100)).await;
    match store.claim(claim(&key, random(), t0 + 1, LEASE)).await.expect("recovered") {
        ClaimOutcome::Completed(done) => assert_eq!(done.response.status, 200),
        other => panic!("expected the completed record, got {other:?}"),
    }
    assert!(store.delete(key).await.unwrap());
}
