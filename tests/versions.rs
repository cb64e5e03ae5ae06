//! Entity versions, the stale guard's store operations, against every backend: SQLite always;
//! PostgreSQL (statements unnamed, then prepared) and Redis when `IDEMGATE_TEST_POSTGRES_URL` /
//! `IDEMGATE_TEST_REDIS_URL` name a server (otherwise those runs say they were skipped). The same
//! functions run unchanged against each, on a store of the run's own: a fresh SQLite file, a
//! PostgreSQL schema created for the run and dropped after it, a Redis key prefix no other run
//! uses. Rows are counted and damaged behind the store's back through [`Raw`].

use idemgate::config::{Dur, PostgresConfig, RedisConfig};
use idemgate::store::{
    Claim, ClaimOutcome, PostgresStore, RecordId, RedisStore, SqliteStore, Store, StoreError, now_ms,
};
use idemgate::version::Version;
use std::sync::Arc;
use std::time::Duration;

/// A store under test, and the raw access to what it keeps.
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    raw: Raw,
}

/// The backend's data, reached without the store.
enum Raw {
    Sqlite { path: std::path::PathBuf, _dir: tempfile::TempDir },
    Postgres { url: String, _schema: Schema },
    Redis { url: String, prefix: String },
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

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("versions.db");
    let store = SqliteStore::open(&path).unwrap();
    Backend { name: "sqlite", store: Arc::new(store), raw: Raw::Sqlite { path, _dir: dir } }
}

async fn postgres(prepared_statements: bool) -> Option<Backend> {
    let Ok(url) = std::env::var("IDEMGATE_TEST_POSTGRES_URL") else {
        skipped("IDEMGATE_TEST_POSTGRES_URL not set");
        return None;
    };
    let (url, schema) = Schema::create(&url).await?;
    let cfg =
        PostgresConfig { url: url.clone(), pool_size: 8, timeout: Dur(Duration::from_secs(5)), prepared_statements };
    let store =
        PostgresStore::open(&cfg).await.expect("IDEMGATE_TEST_POSTGRES_URL is set but the server cannot be used");
    let name = if prepared_statements { "postgres (prepared statements)" } else { "postgres" };
    Some(Backend { name, store: Arc::new(store), raw: Raw::Postgres { url, _schema: schema } })
}

async fn redis() -> Option<Backend> {
    let Ok(url) = std::env::var("IDEMGATE_TEST_REDIS_URL") else {
        skipped("IDEMGATE_TEST_REDIS_URL not set");
        return None;
    };
    let prefix = format!("idemgate-test:{}:", run_id());
    let cfg =
        RedisConfig { url: url.clone(), key_prefix: prefix.clone(), timeout: Dur(Duration::from_secs(5)), tls: None };
    let store = RedisStore::open(&cfg).await.expect("IDEMGATE_TEST_REDIS_URL is set but the server cannot be used");
    Some(Backend { name: "redis", store: Arc::new(store), raw: Raw::Redis { url, prefix } })
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
        let name = format!("idemgate_versions_{}", run_id());
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

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

async fn pg(url: &str, sql: &str) {
    pg_client(url).await.batch_execute(sql).await.expect(sql);
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

impl Raw {
    /// How many version rows the backend holds, expired or not; None where expired ones vanish
    /// by themselves (Redis).
    async fn versions(&self) -> Option<i64> {
        match self {
            Raw::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                Some(conn.query_row("SELECT count(*) FROM versions", [], |r| r.get(0)).unwrap())
            }
            Raw::Postgres { url, .. } => {
                let client = pg_client(url).await;
                Some(client.query_one("SELECT count(*) FROM idemgate_versions", &[]).await.unwrap().get(0))
            }
            Raw::Redis { .. } => None,
        }
    }

    /// Whether the backend holds anything for the entity, expired or not.
    async fn holds(&self, id: &RecordId) -> bool {
        let params = (&*id.route, &id.scope, &id.key);
        match self {
            Raw::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let sql = "SELECT count(*) FROM versions WHERE route = ?1 AND scope = ?2 AND entity = ?3";
                conn.query_row(sql, rusqlite::params![params.0, params.1, params.2], |r| r.get::<_, i64>(0)).unwrap()
                    > 0
            }
            Raw::Postgres { url, .. } => {
                let sql = "SELECT count(*) FROM idemgate_versions WHERE route = $1 AND scope = $2 AND entity = $3";
                let row = pg_client(url).await.query_one(sql, &[&params.0, params.1, params.2]).await.unwrap();
                row.get::<_, i64>(0) > 0
            }
            Raw::Redis { url, prefix } => {
                let key = redis_key(prefix, id);
                redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut redis_connection(url).await).await.unwrap() > 0
            }
        }
    }

    /// Overwrites the entity's stored version with something that is no version.
    async fn damage(&self, id: &RecordId) {
        let later = now_ms() + 60_000;
        match self {
            Raw::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute(
                    "INSERT OR REPLACE INTO versions VALUES (?1, ?2, ?3, 'garbage', ?4)",
                    rusqlite::params![&*id.route, id.scope, id.key, later],
                )
                .unwrap();
            }
            Raw::Postgres { url, .. } => {
                let client = pg_client(url).await;
                let sql = "INSERT INTO idemgate_versions VALUES ($1, $2, $3, 'garbage', $4)
                           ON CONFLICT (route, scope, entity) DO UPDATE SET version = 'garbage'";
                client.execute(sql, &[&&*id.route, &id.scope, &id.key, &later]).await.unwrap();
            }
            Raw::Redis { url, prefix } => {
                let mut set = redis::cmd("SET");
                set.arg(redis_key(prefix, id)).arg("garbage").arg("PX").arg(60_000);
                set.query_async::<()>(&mut redis_connection(url).await).await.unwrap();
            }
        }
    }
}

/// The layout src/store/redis/versions.rs documents.
fn redis_key(prefix: &str, id: &RecordId) -> String {
    format!("{prefix}#version:{}:{}:{}", id.route, id.scope, id.key)
}

fn entity(name: &str) -> RecordId {
    RecordId { route: "invoices".into(), scope: String::new(), key: name.into() }
}

fn v(text: &str) -> Version {
    Version::parse(text).unwrap_or_else(|| panic!("{text:?} should be a version"))
}

fn later() -> i64 {
    now_ms() + 60_000
}

impl Backend {
    async fn version(&self, id: &RecordId) -> Option<Version> {
        self.store.version(id.clone()).await.unwrap_or_else(|e| panic!("{}: version: {e}", self.name))
    }

    async fn raise(&self, id: &RecordId, version: &str, expires_ms: i64) {
        let raised = self.store.raise_version(id.clone(), v(version), expires_ms).await;
        raised.unwrap_or_else(|e| panic!("{}: raise_version({version}): {e}", self.name));
    }
}

async fn the_highest_version_of_a_kind_is_kept(b: &Backend) {
    let id = entity("cus_highest");
    assert_eq!(b.version(&id).await, None, "{}: nothing recorded yet", b.name);
    let steps = [("5", "5"), ("3", "5"), ("5", "5"), ("007", "7"), ("10", "10"), ("9", "10")];
    for (raised, kept) in steps {
        b.raise(&id, raised, later()).await;
        assert_eq!(b.version(&id).await, Some(v(kept)), "{}: after raising {raised}", b.name);
    }
    // Another kind never compares, so it replaces, whichever is "larger".
    b.raise(&id, "2026-12-07T10:00:00Z", later()).await;
    assert_eq!(b.version(&id).await, Some(v("2026-12-07T10:00:00Z")), "{}: an instant after integers", b.name);
    b.raise(&id, "2026-12-07T11:00:00+02:00", later()).await;
    assert_eq!(b.version(&id).await, Some(v("2026-12-07T10:00:00Z")), "{}: an earlier instant", b.name);
    b.raise(&id, "Mon, 07 Dec 2026 10:00:00 GMT", later()).await;
    assert_eq!(b.version(&id).await, Some(v("2026-12-07T10:00:00Z")), "{}: the same instant as a date", b.name);
    b.raise(&id, "2026-12-07T10:00:00.000000001Z", later()).await;
    assert_eq!(b.version(&id).await, Some(v("2026-12-07T10:00:00.000000001Z")), "{}: a nanosecond later", b.name);
    b.raise(&id, "1", later()).await;
    assert_eq!(b.version(&id).await, Some(v("1")), "{}: an integer after instants", b.name);
}

/// An equal raise writes (its expiry with it); a refused lower one leaves the expiry alone.
async fn an_equal_raise_refreshes_the_expiry_and_a_refused_one_does_not(b: &Backend) {
    let (refreshed, refused) = (entity("cus_refreshed"), entity("cus_refused"));
    let soon = now_ms() + 400;
    for id in [&refreshed, &refused] {
        b.raise(id, "5", soon).await;
    }
    b.raise(&refreshed, "5", later()).await;
    b.raise(&refused, "3", later()).await;
    while now_ms() <= soon + 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.version(&refreshed).await, Some(v("5")), "{}: the equal raise set a new expiry", b.name);
    assert_eq!(b.version(&refused).await, None, "{}: the lower raise kept the old expiry", b.name);
}

async fn an_expired_version_is_absent_and_any_version_replaces_it(b: &Backend) {
    let id = entity("cus_expired");
    b.raise(&id, "9", now_ms() - 1000).await;
    assert_eq!(b.version(&id).await, None, "{}: expired", b.name);
    b.raise(&id, "2", later()).await;
    assert_eq!(b.version(&id).await, Some(v("2")), "{}: a lower version replaces an expired one", b.name);
}

async fn routes_scopes_and_entities_are_independent(b: &Backend) {
    let ids = [
        RecordId { route: "invoices".into(), scope: String::new(), key: "cus_apart".into() },
        RecordId { route: "payments".into(), scope: String::new(), key: "cus_apart".into() },
        RecordId { route: "invoices".into(), scope: "0123abcd".into(), key: "cus_apart".into() },
        RecordId { route: "invoices".into(), scope: String::new(), key: "cus_apart:2".into() },
    ];
    for (i, id) in ids.iter().enumerate() {
        b.raise(id, &(100 - i).to_string(), later()).await;
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(b.version(id).await, Some(v(&(100 - i).to_string())), "{}: {id:?}", b.name);
    }
    // A record of the same route, scope and key is something else again.
    let claim = Claim { id: ids[0].clone(), token: 1, fingerprint: None, now_ms: now_ms(), lease_ms: 60_000 };
    let claimed = b.store.claim(claim).await.unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed { took_over: false, .. }), "{}: {claimed:?}", b.name);
    assert_eq!(b.version(&ids[0]).await, Some(v("100")), "{}: the claim left the version alone", b.name);
    b.store.release(ids[0].clone(), 1).await.unwrap();
    assert_eq!(b.version(&ids[0]).await, Some(v("100")), "{}: and so did its release", b.name);
}

/// A small seeded generator, so that a failing order repeats.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn shuffled(&mut self, mut items: Vec<u32>) -> Vec<u32> {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
        items
    }
}

/// 32 tasks raise 1..=200 in a shuffled order, all at once: whatever interleaving the backend
/// sees, no lower raise may overwrite a higher one.
async fn concurrent_raises_leave_the_highest(b: &Backend) {
    const TASKS: usize = 32;
    let mut rng = Lcg(0x5eed);
    for round in 0..5 {
        let id = entity(&format!("cus_storm_{round}"));
        let order = rng.shuffled((1..=200).collect());
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let mine: Vec<u32> = order.iter().copied().skip(task).step_by(TASKS).collect();
                let (store, id) = (b.store.clone(), id.clone());
                tokio::spawn(async move {
                    for n in mine {
                        store.raise_version(id.clone(), v(&n.to_string()), later()).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(b.version(&id).await, Some(v("200")), "{}: round {round}", b.name);
    }
}

/// The sweep deletes expired versions after expired records, within one batch count. Redis
/// expires its keys by itself and sweeps nothing.
async fn sweep_deletes_expired_versions(b: &Backend) {
    let now = now_ms();
    while b.store.sweep(now, 1000).await.unwrap() > 0 {}
    let Some(before) = b.raw.versions().await else {
        let id = entity("cus_swept");
        b.raise(&id, "1", now - 1).await;
        assert!(!b.raw.holds(&id).await, "{}: an expired version is gone by itself", b.name);
        assert_eq!(b.store.sweep(now_ms(), 1000).await.unwrap(), 0, "{}", b.name);
        return;
    };
    let record = RecordId { route: "invoices".into(), scope: String::new(), key: "evt_swept".into() };
    let claim = Claim { id: record.clone(), token: 7, fingerprint: None, now_ms: now - 10_000, lease_ms: 60_000 };
    b.store.claim(claim).await.unwrap();
    assert!(b.store.complete(record, 7, completed(now - 10_000, now - 1)).await.unwrap());
    let expired: Vec<_> = (0..5).map(|i| entity(&format!("cus_swept_{i}"))).collect();
    let live: Vec<_> = (0..2).map(|i| entity(&format!("cus_kept_{i}"))).collect();
    for id in &expired {
        b.raise(id, "1", now - 1).await;
    }
    for id in &live {
        b.raise(id, "1", later()).await;
    }
    assert_eq!(b.raw.versions().await, Some(before + 7));
    assert_eq!(b.store.sweep(now, 4).await.unwrap(), 4, "{}: the record and three versions", b.name);
    assert_eq!(b.store.sweep(now, 4).await.unwrap(), 2, "{}: the other two versions", b.name);
    assert_eq!(b.store.sweep(now, 4).await.unwrap(), 0, "{}", b.name);
    assert_eq!(b.raw.versions().await, Some(before + 2), "{}: the rows are gone", b.name);
    for id in &expired {
        assert!(!b.raw.holds(id).await, "{}: {id:?} was not swept", b.name);
    }
    for id in &live {
        assert_eq!(b.version(id).await, Some(v("1")), "{}: a live version was swept", b.name);
    }
}

fn completed(created_ms: i64, expires_ms: i64) -> Arc<idemgate::store::Completed> {
    let response = idemgate::store::StoredResponse {
        status: 200,
        headers: vec![],
        body: bytes::Bytes::new(),
        body_omitted: false,
    };
    Arc::new(idemgate::store::Completed { fingerprint: None, response, created_ms, expires_ms })
}

/// A stored value that is no version is an error, not an absent version (which would let every
/// delivery through as fresh); the next raise replaces it, as it would a version of another kind.
async fn a_damaged_version_is_an_error_until_replaced(b: &Backend) {
    let id = entity("cus_damaged");
    b.raise(&id, "5", later()).await;
    b.raw.damage(&id).await;
    match b.store.version(id.clone()).await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("garbage"), "{}: {message}", b.name),
        other => panic!("{}: expected an error, got {other:?}", b.name),
    }
    b.raise(&id, "3", later()).await;
    assert_eq!(b.version(&id).await, Some(v("3")), "{}", b.name);
}

async fn suite(b: Backend) {
    the_highest_version_of_a_kind_is_kept(&b).await;
    an_equal_raise_refreshes_the_expiry_and_a_refused_one_does_not(&b).await;
    an_expired_version_is_absent_and_any_version_replaces_it(&b).await;
    routes_scopes_and_entities_are_independent(&b).await;
    concurrent_raises_leave_the_highest(&b).await;
    sweep_deletes_expired_versions(&b).await;
    a_damaged_version_is_an_error_until_replaced(&b).await;
    b.store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_keeps_entity_versions() {
    suite(sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_keeps_entity_versions() {
    if let Some(b) = postgres(false).await {
        suite(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_with_prepared_statements_keeps_entity_versions() {
    if let Some(b) = postgres(true).await {
        suite(b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_keeps_entity_versions() {
    if let Some(b) = redis().await {
        suite(b).await;
    }
}
