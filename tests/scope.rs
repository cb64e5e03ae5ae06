//! Keys on a route without `scope` are scoped by the request's credentials: one client's stored
//! response never replays to another (issue 14), and an upgrade keeps older records answering.

mod common;

use common::{TestApp, TestProxy};

const UNSCOPED: &str = "routes:
  - name: api
    match: { path_prefix: /api/ }
    key: { header: Idempotency-Key }
";

fn as_alice(key: &str) -> [(&str, &str); 2] {
    [("idempotency-key", key), ("authorization", "Bearer alice")]
}

#[tokio::test]
async fn one_clients_stored_response_never_replays_to_another() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, UNSCOPED).await;
    let cookie = [("x-test-header", "set-cookie=session=alice-secret")];
    let alice = [as_alice("k").as_slice(), cookie.as_slice()].concat();
    let first = proxy.post("/api/orders", &alice, "").await;
    assert_eq!(first.header("set-cookie"), Some("session=alice-secret"));
    // Another client, the same key: a first delivery of its own, never Alice's response.
    for other in [
        vec![("idempotency-key", "k"), ("authorization", "Bearer bob")],
        vec![("idempotency-key", "k"), ("cookie", "session=bob")],
        vec![("idempotency-key", "k")],
    ] {
        let reply = proxy.post("/api/orders", &other, "").await;
        assert!(!reply.replayed(), "{other:?} got a replay");
        assert_ne!(reply.header("set-cookie"), Some("session=alice-secret"), "{other:?}");
    }
    assert_eq!(app.count("k"), 4);
    // Each client's own duplicate still replays its own answer.
    let again = proxy.post("/api/orders", &alice, "").await;
    assert!(again.replayed());
    assert_eq!(again.header("set-cookie"), Some("session=alice-secret"));
    assert_eq!(app.count("k"), 4);
    // The admin API finds a credential-scoped key by the credentials it was sent with.
    assert_eq!(proxy.admin.get("/admin/keys/api/k?authorization=Bearer%20alice").await.status, 200);
    assert_eq!(proxy.admin.get("/admin/keys/api/k?authorization=Bearer%20carol").await.status, 404);
    assert_eq!(proxy.admin.get("/admin/keys/api/k").await.status, 200, "the anonymous client's key");
}

#[tokio::test]
async fn scope_none_shares_one_namespace_on_purpose() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &format!("{UNSCOPED}    scope: none\n")).await;
    assert_eq!(proxy.post("/api/x", &as_alice("shared"), "").await.status, 200);
    let bob = proxy.post("/api/x", &[("idempotency-key", "shared"), ("authorization", "Bearer bob")], "").await;
    assert!(bob.replayed());
    assert_eq!(app.count("shared"), 1);
}

/// Records an idemgate without credential scopes stored (in the shared scope) still answer for
/// their keys after the upgrade; records anonymous clients make after it never reach others.
#[tokio::test]
async fn an_upgrade_never_turns_a_completed_key_into_a_second_forward() {
    let app = TestApp::start().await;
    // Before the upgrade: one namespace for everyone, as `scope: none` keeps it.
    let before = TestProxy::start(&app, &format!("{UNSCOPED}    scope: none\n")).await;
    assert_eq!(before.post("/api/x", &as_alice("old"), "").await.status, 200);
    let (dir, db) = before.stop().await;
    // An older idemgate never wrote the marker of when credential scopes began.
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(conn.execute("DELETE FROM records WHERE route = 'idemgate:meta'", []).unwrap(), 1);
    drop(conn);
    let after = TestProxy::start_in(dir, db, &app.url(), UNSCOPED).await;
    let replay = after.post("/api/x", &as_alice("old"), "").await;
    assert!(replay.replayed(), "a key completed before the upgrade was forwarded again");
    assert_eq!(app.count("old"), 1);
    // An anonymous client's key completed after the upgrade is its own.
    assert_eq!(after.post("/api/x", &[("idempotency-key", "new")], "").await.status, 200);
    assert!(!after.post("/api/x", &as_alice("new"), "").await.replayed());
    assert_eq!(app.count("new"), 2);
}
