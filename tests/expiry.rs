//! Leases and ttls running out: wall-clock by contract, so these poll with a bound.

mod common;

use common::{TestApp, TestProxy, eventually};
use idemgate::store::{Claim, ClaimOutcome, RecordId, SqliteStore, Store, now_ms};
use std::time::Duration;

#[tokio::test]
async fn a_completed_key_older_than_ttl_is_treated_as_first_seen() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
    ttl: 300ms
";
    let proxy = TestProxy::start(&app, routes).await;
    let key = [("idempotency-key", "short")];
    assert!(!proxy.post("/hooks/a", &key, "{}").await.replayed());
    assert!(proxy.post("/hooks/a", &key, "{}").await.replayed());
    let forwarded_again =
        eventually(Duration::from_secs(5), || async { !proxy.post("/hooks/a", &key, "{}").await.replayed() }).await;
    assert!(forwarded_again);
    assert_eq!(app.count("short"), 2, "once more after the ttl, claimed again");
    assert!(proxy.post("/hooks/a", &key, "{}").await.replayed(), "and completed again");
}

#[tokio::test]
async fn an_unfinished_claim_blocks_duplicates_until_its_lease_ends() {
    // A claim left behind by a process that died mid-request, in the real store file.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let store = SqliteStore::open(&db).unwrap();
    let id = RecordId { route: "hooks".into(), scope: String::new(), key: "orphan".into() };
    let claim = Claim { id, token: 1, fingerprint: None, now_ms: now_ms(), lease_ms: 1500 };
    assert!(matches!(store.claim(claim).await.unwrap(), ClaimOutcome::Claimed { token: 1, .. }));
    store.close().await.unwrap();

    let app = TestApp::start().await;
    let routes = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";
    let proxy = TestProxy::start_in(dir, db, &app.url(), routes).await;
    let key = [("idempotency-key", "orphan")];
    proxy.post("/hooks/a", &key, "{}").await.assert_problem(409);
    let forwarded =
        eventually(Duration::from_secs(5), || async { proxy.post("/hooks/a", &key, "{}").await.status == 200 }).await;
    assert!(forwarded, "after the lease the key is treated as released");
    assert_eq!(app.count("orphan"), 1, "forwarded once more, then completed");
    assert!(proxy.post("/hooks/a", &key, "{}").await.replayed());
    // The takeover is counted: the app may have seen this key before the crash.
    assert_eq!(proxy.metric(r#"idemgate_lease_expiries_total{route="hooks"}"#).await, 1.0);
}

#[tokio::test]
async fn the_sweeper_deletes_expired_records_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("sweep.db")).unwrap();
    let now = now_ms();
    for i in 0..2500 {
        let id = RecordId { route: "r".into(), scope: String::new(), key: format!("k{i}") };
        let lease_ms = if i < 2100 { 10 } else { 60_000 };
        store.claim(Claim { id, token: i, fingerprint: None, now_ms: now, lease_ms }).await.unwrap();
    }
    // Claims whose lease ended unfinished are kept for a while, so a takeover can be counted.
    assert_eq!(store.sweep(now + 1000, 1000).await.unwrap(), 0);
    let later = now + 1000 + idemgate::store::ABANDONED_CLAIM_RETENTION_MS;
    assert_eq!(store.sweep(later, 1000).await.unwrap(), 1000);
    assert_eq!(store.sweep(later, 1000).await.unwrap(), 1000);
    assert_eq!(store.sweep(later, 1000).await.unwrap(), 100);
    assert_eq!(store.sweep(later, 1000).await.unwrap(), 0, "live claims are kept");
    let id = RecordId { route: "r".into(), scope: String::new(), key: "k2200".into() };
    assert!(store.get(id).await.unwrap().is_some());
    store.close().await.unwrap();
}
