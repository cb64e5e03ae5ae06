//! Against a real server named by `IDEMGATE_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/0`);
//! without it those tests say they were skipped. Each test writes under its own random prefix.
//! The unreachable and silent-server tests need no server and always run.

use super::*;
use crate::config::Dur;
use crate::fingerprint::Fingerprint;
use crate::store::{StoredResponse, now_ms};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::time::Instant;

fn test_url() -> Option<String> {
    match std::env::var("IDEMGATE_TEST_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped: IDEMGATE_TEST_REDIS_URL not set");
            None
        }
    }
}

fn random_prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("idemgate-unit:{:x}:", RandomState::new().hash_one((now_ms(), std::process::id())))
}

fn config(url: &str, timeout: Duration) -> RedisConfig {
    RedisConfig { url: url.to_string(), key_prefix: random_prefix(), timeout: Dur(timeout), tls: None }
}

async fn open_test_store() -> Option<RedisStore> {
    let url = test_url()?;
    Some(
        RedisStore::open(&config(&url, Duration::from_secs(5)))
            .await
            .expect("IDEMGATE_TEST_REDIS_URL is set but unusable"),
    )
}

fn id(key: &str) -> RecordId {
    RecordId { route: "r".into(), scope: String::new(), key: key.to_string() }
}

fn claim(id: &RecordId, token: u64, fingerprint: Option<Fingerprint>, lease_ms: i64) -> Claim {
    Claim { id: id.clone(), token, fingerprint, now_ms: now_ms(), lease_ms }
}

/// Every byte value, NULs included, and a fingerprint that starts with NUL.
fn binary_body() -> Bytes {
    let mut body: Vec<u8> = (0..=255u8).collect();
    body.extend_from_slice(b"\x00\x00tail\x00");
    Bytes::from(body)
}

fn odd_fingerprint() -> Fingerprint {
    std::array::from_fn(|i| (i * 37) as u8)
}

fn completed(ttl_ms: i64, body: Bytes, body_omitted: bool) -> Arc<Completed> {
    let now = now_ms();
    Arc::new(Completed {
        fingerprint: Some(odd_fingerprint()),
        response: StoredResponse {
            status: 207,
            headers: vec![
                (HeaderName::from_static("set-cookie"), HeaderValue::from_static("a=1; Path=/")),
                (HeaderName::from_static("x-note"), HeaderValue::from_bytes(b"caf\xe9: a:b").unwrap()),
                (HeaderName::from_static("set-cookie"), HeaderValue::from_static("b=2")),
                (HeaderName::from_static("x-empty"), HeaderValue::from_static("")),
            ],
            body,
            body_omitted,
        },
        created_ms: now,
        expires_ms: now + ttl_ms,
    })
}

impl RedisStore {
    async fn raw<T: ::redis::FromRedisValue>(&self, c: &Cmd) -> T {
        let mut manager = self.conn.manager.clone();
        c.query_async(&mut manager).await.unwrap()
    }

    async fn exists(&self, id: &RecordId) -> bool {
        self.raw::<i64>(cmd("EXISTS").arg(self.key(id))).await == 1
    }

    async fn pttl(&self, id: &RecordId) -> i64 {
        self.raw(cmd("PTTL").arg(self.key(id))).await
    }

    /// Polls (bounded) until Redis' clock has ended the record's lease.
    async fn wait_for_lease_end(&self, id: &RecordId) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pttl(id).await > ABANDONED_CLAIM_RETENTION_MS {
            assert!(Instant::now() < deadline, "the lease did not end within 5s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_key_give_one_owner() {
    let Some(store) = open_test_store().await else { return };
    let store = Arc::new(store);
    let key = id("storm");
    let tasks: Vec<_> = (0..200u64)
        .map(|token| {
            let (store, claim) = (store.clone(), claim(&key, token, Some([9; 32]), 60_000));
            tokio::spawn(async move { store.claim(claim).await.unwrap() })
        })
        .collect();
    let mut owners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            ClaimOutcome::Claimed { token, .. } => owners.push(token),
            ClaimOutcome::InFlight { fingerprint, expires_ms } => {
                assert_eq!(fingerprint, Some([9; 32]));
                assert!(expires_ms > now_ms() + 50_000);
            }
            ClaimOutcome::Completed(_) => panic!("nothing was completed"),
        }
    }
    assert_eq!(owners.len(), 1, "owners: {owners:?}");
    store.delete(key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_keys_are_all_claimed() {
    let Some(store) = open_test_store().await else { return };
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let (store, claim) = (store.clone(), claim(&id(&format!("k:{i}")), i, None, 60_000));
            tokio::spawn(async move { store.claim(claim).await.unwrap() })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            ClaimOutcome::Claimed { token, .. } => assert_eq!(token, i as u64),
            other => panic!("key {i}: {other:?}"),
        }
    }
    for i in 0..200 {
        assert!(store.delete(id(&format!("k:{i}"))).await.unwrap());
    }
}

#[tokio::test]
async fn the_key_layout_is_one_hash_per_record_kept_for_lease_and_retention() {
    let Some(store) = open_test_store().await else { return };
    let rid = RecordId { route: "orders".into(), scope: "0a1b".into(), key: "evt:42:x".into() };
    assert!(matches!(store.claim(claim(&rid, 5, None, 30_000)).await.unwrap(), ClaimOutcome::Claimed { token: 5, .. }));
    let literal = format!("{}orders:0a1b:evt:42:x", store.prefix);
    assert_eq!(store.key(&rid), literal);
    assert_eq!(store.raw::<String>(cmd("TYPE").arg(&literal)).await, "hash");
    let mut fields: Vec<String> = store.raw(cmd("HKEYS").arg(&literal)).await;
    fields.sort();
    assert_eq!(fields, ["created_ms", "expires_ms", "state", "token"], "no fingerprint field when there is none");
    let pttl = store.pttl(&rid).await - ABANDONED_CLAIM_RETENTION_MS;
    assert!((29_000..=30_000).contains(&pttl), "the lease, then the retention: {pttl}");
    // An unscoped record: the scope is empty between the separators.
    assert_eq!(store.key(&id("k")), format!("{}r::k", store.prefix));
    store.delete(rid).await.unwrap();
}

#[tokio::test]
async fn the_token_fences_completion_and_release() {
    let Some(store) = open_test_store().await else { return };
    let key = id("fence");
    assert!(matches!(store.claim(claim(&key, 1, None, 200)).await.unwrap(), ClaimOutcome::Claimed { token: 1, .. }));
    // Another token can neither complete nor release.
    assert!(!store.complete(key.clone(), 2, completed(60_000, binary_body(), false)).await.unwrap());
    store.release(key.clone(), 2).await.unwrap();
    assert_eq!(store.get(key.clone()).await.unwrap().unwrap().state, State::InFlight);

    // The lease (200 ms) ends by Redis' clock; a new token takes the key over, and says so.
    store.wait_for_lease_end(&key).await;
    let outcome = store.claim(claim(&key, 3, None, 60_000)).await.unwrap();
    assert!(matches!(outcome, ClaimOutcome::Claimed { token: 3, took_over: true }), "{outcome:?}");
    // The old owner, back from its pause, is fenced out of both.
    assert!(!store.complete(key.clone(), 1, completed(60_000, binary_body(), false)).await.unwrap());
    store.release(key.clone(), 1).await.unwrap();
    assert_eq!(store.get(key.clone()).await.unwrap().unwrap().state, State::InFlight, "the new claim stands");
    assert!(store.complete(key.clone(), 3, completed(60_000, binary_body(), false)).await.unwrap());
    assert!(!store.complete(key.clone(), 3, completed(60_000, binary_body(), false)).await.unwrap(), "final");
    // A completed record is not released, even by its own token.
    store.release(key.clone(), 3).await.unwrap();
    assert_eq!(store.get(key.clone()).await.unwrap().unwrap().state, State::Completed);
    store.delete(key).await.unwrap();
}

#[tokio::test]
async fn release_forgets_the_claim() {
    let Some(store) = open_test_store().await else { return };
    let key = id("rel");
    store.claim(claim(&key, 1, None, 60_000)).await.unwrap();
    store.release(key.clone(), 1).await.unwrap();
    assert!(!store.exists(&key).await);
    assert!(matches!(store.claim(claim(&key, 2, None, 60_000)).await.unwrap(), ClaimOutcome::Claimed { token: 2, .. }));
    store.delete(key).await.unwrap();
}

#[tokio::test]
async fn a_completed_record_round_trips_byte_for_byte() {
    let Some(store) = open_test_store().await else { return };
    let key = id("bytes");
    let first = claim(&key, 11, Some(odd_fingerprint()), 60_000);
    let claimed_at = first.now_ms;
    assert!(matches!(store.claim(first).await.unwrap(), ClaimOutcome::Claimed { .. }));
    match store.claim(claim(&key, 12, None, 60_000)).await.unwrap() {
        ClaimOutcome::InFlight { fingerprint, .. } => assert_eq!(fingerprint, Some(odd_fingerprint())),
        other => panic!("expected in flight, got {other:?}"),
    }
    // The record is what was completed, creation time and fingerprint included.
    let done = Completed {
        created_ms: claimed_at + 7,
        fingerprint: Some(odd_fingerprint()),
        ..Arc::unwrap_or_clone(completed(60_000, binary_body(), false))
    };
    assert!(store.complete(key.clone(), 11, Arc::new(done.clone())).await.unwrap());
    match store.claim(claim(&key, 13, None, 60_000)).await.unwrap() {
        ClaimOutcome::Completed(found) => {
            assert_eq!(found.response, done.response, "status, repeated headers in order, binary body");
            assert_eq!(found.fingerprint, Some(odd_fingerprint()));
            assert_eq!(found.expires_ms, done.expires_ms);
            assert_eq!(found.created_ms, claimed_at + 7);
        }
        other => panic!("expected the completed record, got {other:?}"),
    }
    // The ttl replaces the lease as the key's expiry.
    let pttl = store.pttl(&key).await;
    assert!((58_000..=60_000).contains(&pttl), "pttl {pttl}");
    store.delete(key).await.unwrap();

    // An omitted body and no fingerprint round-trip too.
    let key = id("omitted");
    store.claim(claim(&key, 21, None, 60_000)).await.unwrap();
    let mut done = Arc::unwrap_or_clone(completed(5_000, Bytes::new(), true));
    done.fingerprint = None;
    assert!(store.complete(key.clone(), 21, Arc::new(done.clone())).await.unwrap());
    match store.claim(claim(&key, 22, None, 60_000)).await.unwrap() {
        ClaimOutcome::Completed(found) => {
            assert_eq!(found.response, done.response);
            assert!(found.response.body_omitted);
            assert_eq!(found.fingerprint, None);
        }
        other => panic!("expected the completed record, got {other:?}"),
    }
    let pttl = store.pttl(&key).await;
    assert!((3_000..=5_000).contains(&pttl), "pttl {pttl}");
    store.delete(key).await.unwrap();
}

#[tokio::test]
async fn records_can_be_read_and_deleted() {
    let Some(store) = open_test_store().await else { return };
    let key = id("admin");
    assert!(store.get(key.clone()).await.unwrap().is_none());
    let c = claim(&key, 1, None, 60_000);
    let (created, expires) = (c.now_ms, c.now_ms + 60_000);
    store.claim(c).await.unwrap();
    let record = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.status, record.created_ms, record.expires_ms),
        (State::InFlight, None, created, expires)
    );
    let done = completed(120_000, Bytes::from_static(b"ok"), false);
    store.complete(key.clone(), 1, done.clone()).await.unwrap();
    let record = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!((record.state, record.status, record.expires_ms), (State::Completed, Some(207), done.expires_ms));
    assert!(store.delete(key.clone()).await.unwrap());
    assert!(!store.delete(key.clone()).await.unwrap());
    assert!(store.get(key.clone()).await.unwrap().is_none());
    assert_eq!(store.sweep(now_ms(), 100).await.unwrap(), 0, "Redis' expiry sweeps");
    store.check_writable().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_killed_connection_is_replaced_and_the_next_operation_succeeds() {
    let Some(url) = test_url() else { return };
    let store = RedisStore::open(&config(&url, Duration::from_secs(5))).await.unwrap();
    let before: i64 = store.raw(cmd("CLIENT").arg("ID")).await;
    // Kill exactly this store's connection (not `TYPE normal`, which would hit every client of a
    // shared server, other tests included), from another connection.
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut killer = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = cmd("CLIENT").arg("KILL").arg("ID").arg(before).query_async(&mut killer).await.unwrap();
    assert_eq!(killed, 1);

    let key = id("reconnect");
    assert!(matches!(store.claim(claim(&key, 1, None, 60_000)).await.unwrap(), ClaimOutcome::Claimed { token: 1, .. }));
    let after: i64 = store.raw(cmd("CLIENT").arg("ID")).await;
    assert_ne!(before, after, "a new connection");
    // Again, with the client idle long enough to see the close before the next operation.
    for round in 0..2 {
        let current: i64 = store.raw(cmd("CLIENT").arg("ID")).await;
        let killed: i64 = cmd("CLIENT").arg("KILL").arg("ID").arg(current).query_async(&mut killer).await.unwrap();
        assert_eq!(killed, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(store.get(key.clone()).await.unwrap().is_some(), "round {round}");
    }
    store.delete(key).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_promptly() {
    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let result = RedisStore::open(&config("redis://127.0.0.1:1/0", timeout)).await;
    let took = start.elapsed();
    assert!(matches!(&result, Err(StoreError::Unavailable(_))), "{:?}", result.err());
    assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
    eprintln!("unreachable: {:?} after {took:?}", result.err().unwrap());
}

/// A CA file that cannot be read fails the open by its field's name, before any connection.
#[tokio::test]
async fn a_missing_ca_file_is_named() {
    let mut cfg = config("rediss://127.0.0.1:1/0", Duration::from_secs(1));
    cfg.tls = Some(crate::config::RedisTlsConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() });
    match RedisStore::open(&cfg).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("store.redis.tls.ca_file /nonexistent/ca.pem"), "{message}")
        }
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}

/// A server that accepts connections and never answers: the operation's bound still holds.
#[tokio::test]
async fn a_silent_server_is_unavailable_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let result = RedisStore::open(&config(&format!("redis://{addr}/0"), timeout)).await;
    let took = start.elapsed();
    assert!(matches!(&result, Err(StoreError::Unavailable(_))), "{:?}", result.err());
    assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
    held.abort();
}

/// A TCP relay to the real server that can be cut (connections dropped, port closed) and restored.
struct Relay {
    addr: std::net::SocketAddr,
    upstream: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let mut relay = Relay { addr: "127.0.0.1:0".parse().unwrap(), upstream, task: None };
        relay.restore().await;
        relay
    }

    async fn restore(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(64).unwrap();
        self.addr = listener.local_addr().unwrap();
        let upstream = self.upstream.clone();
        self.task = Some(tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Aborting the accept loop drops the listener and every link with it.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_unavailable_and_the_store_recovers_without_restart() {
    let Some(url) = test_url() else { return };
    let info = url.as_str().into_connection_info().unwrap();
    let ::redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        eprintln!("skipped: the outage test relays TCP only");
        return;
    };
    let authority = format!("{host}:{port}");
    if !url.contains(&authority) {
        eprintln!("skipped: the outage test needs an explicit host:port in IDEMGATE_TEST_REDIS_URL");
        return;
    }
    let mut relay = Relay::start(authority.clone()).await;
    let relayed = url.replacen(&authority, &relay.addr.to_string(), 1);
    let timeout = Duration::from_secs(1);
    let store = RedisStore::open(&config(&relayed, timeout)).await.unwrap();
    let (a, b) = (id("outage-a"), id("outage-b"));
    assert!(matches!(store.claim(claim(&a, 1, None, 60_000)).await.unwrap(), ClaimOutcome::Claimed { .. }));

    relay.cut().await;
    for _ in 0..3 {
        let start = Instant::now();
        let result = store.claim(claim(&b, 2, None, 60_000)).await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
        assert!(start.elapsed() < timeout + Duration::from_millis(500), "took {:?}", start.elapsed());
    }
    assert!(matches!(store.check_writable().await, Err(StoreError::Unavailable(_))));

    relay.restore().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let outcome = loop {
        match store.claim(claim(&b, 3, None, 60_000)).await {
            Ok(outcome) => break outcome,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no recovery within 5s: {e}"),
        }
    };
    assert!(matches!(outcome, ClaimOutcome::Claimed { token: 3, .. }), "{outcome:?}");
    assert_eq!(store.get(a.clone()).await.unwrap().unwrap().state, State::InFlight, "the records are intact");
    store.check_writable().await.unwrap();
    store.delete(a).await.unwrap();
    store.delete(b).await.unwrap();
    relay.cut().await;
}

/// A request retried after a dropped connection may find its first attempt applied: the claim and
/// the completion then recognise their own token, and only on a retry.
#[tokio::test]
async fn a_retry_recognises_its_own_applied_attempt() {
    let Some(store) = open_test_store().await else { return };
    let key = id("retry");
    store.claim(claim(&key, 41, Some([1; 32]), 60_000)).await.unwrap();
    let hash: Value = store.raw(cmd("HGETALL").arg(store.key(&key))).await;
    assert!(matches!(claim_outcome(hash.clone(), 41, true).unwrap(), ClaimOutcome::Claimed { token: 41, .. }));
    assert!(matches!(claim_outcome(hash.clone(), 41, false).unwrap(), ClaimOutcome::InFlight { .. }), "as SQLite");
    assert!(matches!(claim_outcome(hash, 42, true).unwrap(), ClaimOutcome::InFlight { .. }), "another token");

    let done = completed(60_000, Bytes::from_static(b"x"), false);
    assert!(store.complete(key.clone(), 41, done.clone()).await.unwrap());
    let again = |token: u64, retry: &'static str| {
        let mut invocation = COMPLETE.prepare_invoke();
        invocation
            .key(store.key(&key))
            .arg(token)
            .arg(200)
            .arg("")
            .arg("other")
            .arg("0")
            .arg(done.expires_ms)
            .arg(60_000)
            .arg(retry);
        invocation
    };
    let mut manager = store.conn.manager.clone();
    let first: i64 = again(41, "0").invoke_async(&mut manager).await.unwrap();
    let retried: i64 = again(41, "1").invoke_async(&mut manager).await.unwrap();
    let stranger: i64 = again(43, "1").invoke_async(&mut manager).await.unwrap();
    assert_eq!((first, retried, stranger), (0, 1, 0));
    match store.claim(claim(&key, 44, None, 60_000)).await.unwrap() {
        ClaimOutcome::Completed(found) => assert_eq!(found.response, done.response, "nothing was overwritten"),
        other => panic!("{other:?}"),
    }
    store.delete(key).await.unwrap();
}
