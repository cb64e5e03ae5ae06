//! A shared store that goes away and comes back: 503 with Retry-After and no forwards while it
//! is gone, completed keys in memory still replayed, readiness failing, then recovery without a
//! restart. The store is reached through a relay in the test that can cut every connection.

mod common;

use common::{TestApp, TestProxy};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to the real server. While cut, it closes every connection, old and new.
struct Relay {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections relaying now: a cut is complete once none is left, so that no command sent
    /// after it can slip through an old connection whose task has not seen the cut yet.
    open: watch::Sender<usize>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = watch::channel(false);
        let open = watch::Sender::new(0usize);
        let counting = open.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let (target, mut cut, open) = (target.clone(), watching.clone(), counting.clone());
                if *cut.borrow() {
                    continue;
                }
                open.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    }
                    drop(client);
                    open.send_modify(|n| *n -= 1);
                });
            }
        });
        Relay { addr, cut, open }
    }

    /// Cuts every connection and waits until all are closed.
    async fn cut(&self) {
        self.cut.send_replace(true);
        let mut open = self.open.subscribe();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), open.wait_for(|n| *n == 0)).await;
        assert!(matches!(closed, Ok(Ok(_))), "the relay's connections did not close");
    }

    fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// `scheme://[user@]host:port/rest` with host:port replaced by the relay's address.
fn through(url: &str, relay: SocketAddr) -> (String, String) {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().as_str();
    let host_port = authority.rsplit('@').next().unwrap();
    (url.replacen(host_port, &relay.to_string(), 1), host_port.to_string())
}

async fn outage(name: &str, store_section: impl Fn(&str) -> String, url: String) {
    let relay_target = through(&url, "127.0.0.1:1".parse().unwrap()).1;
    let relay = Relay::start(relay_target).await;
    let (relayed, _) = through(&url, relay.addr);
    let app = TestApp::start().await;
    let routes = format!(
        "{}\nroutes:\n  - name: hooks\n    match: {{ path_prefix: /hooks/ }}\n    key: {{ header: Idempotency-Key }}\n",
        store_section(&relayed)
    );
    let proxy = Arc::new(TestProxy::start(&app, &routes).await);
    let run = format!("{:x}", idemgate::store::now_ms());
    let (done, fresh) = (format!("{run}-done"), format!("{run}-fresh"));
    assert_eq!(proxy.post("/hooks/a", &[("idempotency-key", &done)], "{}").await.status, 200, "{name}");

    relay.cut().await;
    let refused = proxy.post("/hooks/a", &[("idempotency-key", &fresh)], "{}").await;
    assert_eq!(refused.assert_problem(503), "urn:idemgate:problem:store-unavailable", "{name}");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(app.count(&fresh), 0, "{name}: never forwarded without a claim");
    assert!(proxy.post("/hooks/a", &[("idempotency-key", &done)], "{}").await.replayed(), "{name}: from memory");
    assert_eq!(proxy.admin.get("/readyz").await.status, 503, "{name}");

    relay.restore();
    let back = proxy.post("/hooks/a", &[("idempotency-key", &fresh)], "{}").await;
    assert_eq!(back.status, 200, "{name}: recovered without a restart: {:?}", back.body);
    assert_eq!(app.count(&fresh), 1);
    assert_eq!(proxy.admin.get("/readyz").await.status, 200, "{name}");
}

fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_then_recovers() {
    let Ok(url) = std::env::var("IDEMGATE_TEST_POSTGRES_URL") else {
        return skipped("postgres outage: IDEMGATE_TEST_POSTGRES_URL not set");
    };
    outage("postgres", |url| format!("store: {{ postgres: {{ url: \"{url}\", timeout: 1s }} }}"), url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_then_recovers() {
    let Ok(url) = std::env::var("IDEMGATE_TEST_REDIS_URL") else {
        return skipped("redis outage: IDEMGATE_TEST_REDIS_URL not set");
    };
    let prefix = format!("outage-{:x}:", idemgate::store::now_ms());
    let section =
        move |url: &str| format!("store: {{ redis: {{ url: \"{url}\", key_prefix: \"{prefix}\", timeout: 1s }} }}");
    outage("redis", section, url).await;
}
