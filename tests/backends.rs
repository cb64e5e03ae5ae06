//! One behavioural suite for every store backend: SQLite always; PostgreSQL and Redis when
//! `IDEMGATE_TEST_POSTGRES_URL` / `IDEMGATE_TEST_REDIS_URL` name a server (otherwise those runs
//! say they were skipped). The same functions run unchanged against each; PostgreSQL twice, with
//! statements sent unnamed (the default) and prepared (`store.postgres.prepared_statements`).

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use idemgate::config::{Dur, PostgresConfig, RedisConfig};
use idemgate::store::{
    Claim, ClaimOutcome, Completed, PostgresStore, RecordId, RedisStore, SqliteStore, State, Store, StoredResponse,
    now_ms,
};
use std::sync::Arc;
use std::time::Duration;

/// A store under test, with what must outlive it (the SQLite temp dir).
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    /// Keys of this run, so shared servers can be reused across runs and parallel tests.
    run: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn id(&self, key: &str) -> RecordId {
        RecordId { route: "suite".into(), scope: String::new(), key: format!("{}-{key}", self.run) }
    }
}

/// Says so on the terminal even though the test harness captures output: a skipped backend must
/// not pass silently.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why}");
}

fn run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{:x}", RandomState::new().hash_one(now_ms()))
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("suite.db")).unwrap();
    Backend { name: "sqlite", store: Arc::new(store), run: run_id(), _dir: Some(dir) }
}

async fn postgres(prepared_statements: bool) -> Option<Backend> {
    let Ok(url) = std::env::var("IDEMGATE_TEST_POSTGRES_URL") else {
        skipped("IDEMGATE_TEST_POSTGRES_URL not set");
        return None;
    };
    let cfg = PostgresConfig { url, pool_size: 8, timeout: Dur(Duration::from_secs(5)), prepared_statements };
    let store =
        PostgresStore::open(&cfg).await.expect("IDEMGATE_TEST_POSTGRES_URL is set but the server cannot be used");
    let name = if prepared_statements { "postgres (prepared statements)" } else { "postgres" };
    Some(Backend { name, store: Arc::new(store), run: run_id(), _dir: None })
}

async fn redis() -> Option<Backend> {
    let Ok(url) = std::env::var("IDEMGATE_TEST_REDIS_URL") else {
        skipped("IDEMGATE_TEST_REDIS_URL not set");
        return None;
    };
    let cfg = RedisConfig {
        url,
        key_prefix: format!("idemgate-test:{}:", run_id()),
        timeout: Dur(Duration::from_secs(5)),
        tls: None,
    };
    let store = RedisStore::open(&cfg).await.expect("IDEMGATE_TEST_REDIS_URL is set but the server cannot be used");
    Some(Backend { name: "redis", store: Arc::new(store), run: run_id(), _dir: None })
}

fn claim(b: &Backend, key: &str, token: u64, lease_ms: i64) -> Claim {
    Claim { id: b.id(key), token, fingerprint: Some([3; 32]), now_ms: now_ms(), lease_ms }
}

fn completed(ttl_ms: i64) -> Arc<Completed> {
    let now = now_ms();
    Arc::new(Completed {
        fingerprint: Some([3; 32]),
        response: StoredResponse {
            status: 201,
            headers: vec![
                (HeaderName::from_static("content-type"), HeaderValue::from_static("application/json")),
                (HeaderName::from_static("set-cookie"), HeaderValue::from_static("a=1")),
                (HeaderName::from_static("set-cookie"), HeaderValue::from_static("b=2")),
            ],
            body: Bytes::from_static(b"{\"ok\":true}\x00\xff\n"),
            body_omitted: false,
        },
        created_ms: now,
        expires_ms: now + ttl_ms,
    })
}

async fn one_owner_among_concurrent_claims(b: &Backend) {
    let tasks: Vec<_> = (0..200)
        .map(|token| {
            let (store, claim) = (b.store.clone(), claim(b, "storm", token, 60_000));
            tokio::spawn(async move { store.claim(claim).await.unwrap() })
        })
        .collect();
    let mut owners = 0;
    for task in tasks {
        match task.await.unwrap() {
            ClaimOutcome::Claimed { .. } => owners += 1,
            ClaimOutcome::InFlight { fingerprint, .. } => assert_eq!(fingerprint, Some([3; 32])),
            ClaimOutcome::Completed(_) => panic!("{}: nothing was completed", b.name),
        }
    }
    assert_eq!(owners, 1, "{}", b.name);
}

async fn distinct_keys_are_all_claimed(b: &Backend) {
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (store, claim) = (b.store.clone(), claim(b, &format!("k{i}"), i, 60_000));
            tokio::spawn(async move { store.claim(claim).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), ClaimOutcome::Claimed { .. }), "{}", b.name);
    }
}

async fn the_token_fences_completion_and_release(b: &Backend) {
    let s = &b.store;
    assert!(matches!(
        s.claim(claim(b, "fence", 1, 60_000)).await.unwrap(),
        ClaimOutcome::Claimed { token: 1, took_over: false }
    ));
    assert!(!s.complete(b.id("fence"), 2, completed(60_000)).await.unwrap(), "{}: another token completes", b.name);
    s.release(b.id("fence"), 2).await.unwrap();
    assert!(matches!(s.claim(claim(b, "fence", 3, 60_000)).await.unwrap(), ClaimOutcome::InFlight { .. }));
    assert!(s.complete(b.id("fence"), 1, completed(60_000)).await.unwrap());
    assert!(!s.complete(b.id("fence"), 1, completed(60_000)).await.unwrap(), "{}: completion is final", b.name);
    s.release(b.id("fence"), 1).await.unwrap();
    match s.claim(claim(b, "fence", 4, 60_000)).await.unwrap() {
        ClaimOutcome::Completed(done) => {
            assert_eq!(done.response, completed(1).response, "{}: stored byte for byte", b.name);
            assert_eq!(done.fingerprint, Some([3; 32]));
        }
        other => panic!("{}: expected the completed record, got {other:?}", b.name),
    }
}

async fn a_released_key_is_claimed_again(b: &Backend) {
    let s = &b.store;
    s.claim(claim(b, "rel", 1, 60_000)).await.unwrap();
    s.release(b.id("rel"), 1).await.unwrap();
    assert!(matches!(
        s.claim(claim(b, "rel", 2, 60_000)).await.unwrap(),
        ClaimOutcome::Claimed { token: 2, took_over: false }
    ));
}

async fn an_ended_lease_is_taken_over_and_fences_the_old_owner(b: &Backend) {
    let s = &b.store;
    assert!(matches!(
        s.claim(claim(b, "lease", 1, 200)).await.unwrap(),
        ClaimOutcome::Claimed { token: 1, took_over: false }
    ));
    // Leases end by wall-clock time on every backend (Redis by its own expiry): poll, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match s.claim(claim(b, "lease", 2, 60_000)).await.unwrap() {
            // The takeover says so: the app may see this key a second time.
            ClaimOutcome::Claimed { token: 2, took_over: true } => break,
            ClaimOutcome::InFlight { .. } if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("{}: the lease did not end: {other:?}", b.name),
        }
    }
    assert!(!s.complete(b.id("lease"), 1, completed(60_000)).await.unwrap(), "{}: the old owner is fenced", b.name);
    assert!(s.complete(b.id("lease"), 2, completed(60_000)).await.unwrap());
}

/// A completed key whose ttl ended is claimed afresh: that is no takeover of an abandoned claim.
async fn a_key_whose_ttl_ended_is_claimed_afresh(b: &Backend) {
    let s = &b.store;
    assert!(matches!(s.claim(claim(b, "ttl", 1, 60_000)).await.unwrap(), ClaimOutcome::Claimed { token: 1, .. }));
    assert!(s.complete(b.id("ttl"), 1, completed(200)).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match s.claim(claim(b, "ttl", 2, 60_000)).await.unwrap() {
            ClaimOutcome::Claimed { token: 2, took_over } => break assert!(!took_over, "{}", b.name),
            ClaimOutcome::Completed(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("{}: the ttl did not end: {other:?}", b.name),
        }
    }
}

async fn records_can_be_read_and_deleted(b: &Backend) {
    let s = &b.store;
    assert!(s.get(b.id("admin")).await.unwrap().is_none());
    s.claim(claim(b, "admin", 1, 60_000)).await.unwrap();
    assert_eq!(s.get(b.id("admin")).await.unwrap().unwrap().state, State::InFlight);
    s.complete(b.id("admin"), 1, completed(60_000)).await.unwrap();
    let record = s.get(b.id("admin")).await.unwrap().unwrap();
    assert_eq!((record.state, record.status), (State::Completed, Some(201)), "{}", b.name);
    assert!(record.expires_ms > now_ms() + 50_000);
    assert!(s.delete(b.id("admin")).await.unwrap());
    assert!(!s.delete(b.id("admin")).await.unwrap());
    assert!(matches!(s.claim(claim(b, "admin", 2, 60_000)).await.unwrap(), ClaimOutcome::Claimed { .. }));
    s.check_writable().await.unwrap();
}

async fn routes_and_scopes_keep_records_apart(b: &Backend) {
    let s = &b.store;
    let key = format!("{}-shared", b.run);
    let ids = [
        RecordId { route: "a".into(), scope: String::new(), key: key.clone() },
        RecordId { route: "b".into(), scope: String::new(), key: key.clone() },
        RecordId { route: "a".into(), scope: "0123abcd".into(), key: key.clone() },
    ];
    for (token, id) in ids.into_iter().enumerate() {
        let c = Claim { id, token: token as u64, fingerprint: None, now_ms: now_ms(), lease_ms: 60_000 };
        assert!(matches!(s.claim(c).await.unwrap(), ClaimOutcome::Claimed { .. }), "{}", b.name);
    }
}

async fn suite(b: Backend) {
    suite_open(&b).await;
    b.store.close().await.unwrap();
}

/// The suite, leaving the store open.
async fn suite_open(b: &Backend) {
    one_owner_among_concurrent_claims(b).await;
    distinct_keys_are_all_claimed(b).await;
    the_token_fences_completion_and_release(b).await;
    a_released_key_is_claimed_again(b).await;
    an_ended_lease_is_taken_over_and_fences_the_old_owner(b).await;
    a_key_whose_ttl_ended_is_claimed_afresh(b).await;
    records_can_be_read_and_deleted(b).await;
    routes_and_scopes_keep_records_apart(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_the_store_contract() {
    suite(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_the_store_contract() {
    if let Some(b) = postgres(false).await {
        suite(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_with_prepared_statements_keeps_the_store_contract() {
    if let Some(b) = postgres(true).await {
        // Twice over on the same pool: the second pass runs on connections whose statements are
        // all prepared and cached already.
        let again = Backend { name: b.name, store: b.store.clone(), run: run_id(), _dir: None };
        suite_open(&b).await;
        suite_open(&again).await;
        b.store.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_keeps_the_store_contract() {
    if let Some(b) = redis().await {
        suite(b).await;
    }
}
