//! SIGTERM and SIGINT: stop accepting, finish requests in flight, close the store, exit 0.

mod common;

use common::child::{ChildProxy, write_config};
use common::{TestApp, TestClient};
use std::time::Duration;

const ROUTES: &str = "server: { shutdown_grace: 10s }
routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_exits_0() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.url(), ROUTES);
    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    let admin = TestClient::new(proxy.admin_addr);

    app.hold("draining");
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.post("/hooks/a", &[("idempotency-key", "draining")], "{}").await })
    };
    app.arrival().await;
    proxy.signal("TERM");
    // Readiness fails while the drain is on.
    // Once this line is out, the listener is closed and readiness says draining.
    while !proxy.lines.recv_timeout(Duration::from_secs(10)).unwrap().contains("shutting down") {}
    assert_eq!(admin.get("/readyz").await.status, 503);
    assert!(tokio::net::TcpStream::connect(proxy.proxy_addr).await.is_err(), "no new connections once the drain began");
    app.release("draining");
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the request in flight finished");
    let status = proxy.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");

    // The drained request's response was stored before it left.
    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    assert!(client.post("/hooks/a", &[("idempotency-key", "draining")], "{}").await.replayed());
    assert_eq!(app.count("draining"), 1);
    proxy.signal("INT");
    assert!(proxy.wait_exit(Duration::from_secs(15)).success());
    // A clean stop leaves no WAL behind.
    let wal = dir.path().join("idemgate.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_for_an_exchange_whose_client_went_away() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.url(), ROUTES);
    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);

    app.hold("orphan");
    let gone = {
        let client = client.clone();
        tokio::spawn(async move { client.post("/hooks/a", &[("idempotency-key", "orphan")], "{}").await })
    };
    app.arrival().await;
    gone.abort();
    let _ = gone.await;
    proxy.signal("TERM");
    while !proxy.lines.recv_timeout(Duration::from_secs(10)).unwrap().contains("shutting down") {}
    // No connection is left, but the exchange is: the app answers only now.
    app.release("orphan");
    assert!(proxy.wait_exit(Duration::from_secs(15)).success());

    let proxy = ChildProxy::spawn(&config);
    let client = TestClient::new(proxy.proxy_addr);
    let reply = client.post("/hooks/a", &[("idempotency-key", "orphan")], "{}").await;
    assert!(reply.replayed(), "the answer that came in during the drain was committed");
    assert_eq!(app.count("orphan"), 1);
}
