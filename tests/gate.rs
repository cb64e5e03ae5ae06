//! The gate's own holes (issue 14): forged key headers, merged keys, doubled hosts, the 409's
//! Retry-After, secrets from the environment, waiters that leave nothing behind, and the memory
//! budget for buffered bodies.

mod common;

use common::child::{ChildProxy, write_config};
use common::{HEADER_ROUTE, TestApp, TestProxy, spawn_post};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::raw_exchange as raw;

#[tokio::test]
async fn a_client_cannot_hand_the_app_a_forged_key_header() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(
        &app,
        "routes:
  - name: optional
    match: { path: /optional }
    key: { header: Idempotency-Key }
    missing_key: forward
  - name: custom
    match: { path: /custom }
    key: { header: Idempotency-Key }
    forward_key_header: X-Event-Key
",
    )
    .await;
    // No key on a `missing_key: forward` route, and a request on no route: both go to the app
    // unprotected, and neither may carry a key header the app would trust.
    let forged = [("x-idempotency-key", "forged"), ("x-event-key", "forged")];
    assert_eq!(proxy.post("/optional", &forged, "").await.status, 200);
    assert_eq!(proxy.post("/elsewhere", &forged, "").await.status, 200);
    let deliveries = app.deliveries();
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        assert!(d.headers.get("x-idempotency-key").is_none(), "{} carried a forged key", d.path_and_query);
        assert!(d.headers.get("x-event-key").is_none(), "{} carried a forged key", d.path_and_query);
    }
    // A protected request's key header is idemgate's, whatever the client sent.
    let reply = proxy.post("/custom", &[("idempotency-key", "real"), ("x-event-key", "forged")], "").await;
    assert_eq!(reply.status, 200);
    let last = app.deliveries().pop().unwrap();
    assert_eq!(last.headers.get_all("x-event-key").iter().collect::<Vec<_>>(), ["real"]);
}

#[tokio::test]
async fn a_key_with_a_comma_is_two_keys_and_refused() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    for key in ["k1,k2", "k1, k2", "\"k1\", \"k2\""] {
        let reply = proxy.post("/hooks/a", &[("idempotency-key", key)], "").await;
        assert_eq!(reply.assert_problem(400), "urn:idemgate:problem:invalid-key", "{key}");
    }
    // One sf-string may hold a comma: it is one key.
    let reply = proxy.post("/hooks/a", &[("idempotency-key", "\"k1,k2\"")], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.total(), 1);
    assert_eq!(app.count("k1,k2"), 1);
}

#[tokio::test]
async fn two_host_headers_are_refused_on_http_1_0_too() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    for version in ["HTTP/1.0", "HTTP/1.1"] {
        for path in ["/hooks/a", "/elsewhere"] {
            let request = format!(
                "POST {path} {version}\r\nHost: a.example\r\nHost: b.example\r\nIdempotency-Key: h1\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let answer = raw(proxy.proxy_addr, request.as_bytes()).await;
            assert_eq!(answer.split_whitespace().nth(1), Some("400"), "{version} {path}: {answer}");
        }
    }
    assert_eq!(app.total(), 0);
    // HTTP/1.0 may still omit Host.
    let answer =
        raw(proxy.proxy_addr, b"POST /hooks/a HTTP/1.0\r\nIdempotency-Key: h2\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(answer.split_whitespace().nth(1), Some("200"), "{answer}");
}

#[tokio::test]
async fn a_409_says_to_retry_when_the_holders_lease_ends() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, &format!("defaults: {{ lease: 30s }}\n{HEADER_ROUTE}")).await);
    app.hold("slow");
    let first = spawn_post(&proxy, &[("idempotency-key", "slow")], "");
    assert_eq!(app.arrival().await, "slow");
    let reply = proxy.post("/hooks/a", &[("idempotency-key", "slow")], "").await;
    reply.assert_problem(409);
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry_after), "Retry-After {retry_after} is not what is left of a 30 s lease");
    app.release("slow");
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test]
async fn waiters_are_woken_by_the_first_answer_and_leave_nothing_behind() {
    let app = TestApp::start().await;
    // The app holds the first request for as long as the test needs, loaded machine or not.
    let route = "upstream_timeout: 30s\ndefaults: { concurrent: wait, wait_timeout: 20s }\n".to_string() + HEADER_ROUTE;
    let proxy = Arc::new(TestProxy::start(&app, &route).await);
    app.hold("one");
    let first = spawn_post(&proxy, &[("idempotency-key", "one")], "");
    assert_eq!(app.arrival().await, "one");
    let waiters: Vec<_> = (0..200).map(|_| spawn_post(&proxy, &[("idempotency-key", "one")], "")).collect();
    // Every waiter has claimed once and found the key in flight before the app answers.
    let claims = "idemgate_store_duration_seconds_count{op=\"claim\"}";
    assert!(
        common::eventually(Duration::from_secs(10), || async { proxy.metric(claims).await >= 201.0 }).await,
        "the waiters never reached the store"
    );
    let before = proxy.metric(claims).await;
    // Held well past the old 200 ms poll: a polling waiter would claim again meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(proxy.metric(claims).await, before, "waiters on a key held here must not poll the store");
    app.release("one");
    assert_eq!(first.await.unwrap().status, 200);
    for waiter in waiters {
        assert!(waiter.await.unwrap().replayed());
    }
    assert_eq!(app.count("one"), 1);
    // Many more waited keys, then nothing: no entry outlives its requests.
    for i in 0..50 {
        let key = format!("k{i}");
        let copies: Vec<_> = (0..3).map(|_| spawn_post(&proxy, &[("idempotency-key", &key)], "")).collect();
        for copy in copies {
            assert_eq!(copy.await.unwrap().status, 200);
        }
    }
    assert_eq!(proxy.metric("idemgate_wait_keys").await, 0.0);
}

#[tokio::test]
async fn bodies_past_the_memory_budget_get_503_before_anything_is_claimed() {
    let app = TestApp::start().await;
    let config = "server: { max_buffered_bytes: 2MiB }\ndefaults: { max_body: 1MiB }\n".to_string() + HEADER_ROUTE;
    let proxy = Arc::new(TestProxy::start(&app, &config).await);
    let big = "x".repeat(900 * 1024);
    app.hold("a");
    app.hold("b");
    let a = spawn_post(&proxy, &[("idempotency-key", "a")], &big);
    let b = spawn_post(&proxy, &[("idempotency-key", "b")], &big);
    app.arrival().await;
    app.arrival().await;
    assert!(proxy.metric("idemgate_buffered_bytes").await >= (1800 * 1024) as f64);
    let refused = proxy.post("/hooks/a", &[("idempotency-key", "c")], &big).await;
    assert_eq!(refused.assert_problem(503), "urn:idemgate:problem:memory-budget");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(proxy.metric("idemgate_buffer_refusals_total").await, 1.0);
    assert_eq!(app.count("c"), 0);
    app.release("a");
    app.release("b");
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    // Nothing was claimed for the refused delivery: its retry is a first delivery.
    let retried = proxy.post("/hooks/a", &[("idempotency-key", "c")], &big).await;
    assert_eq!(retried.status, 200);
    assert!(!retried.replayed());
    assert_eq!(app.count("c"), 1);
    assert_eq!(proxy.metric("idemgate_buffered_bytes").await, 0.0);
}

#[test]
fn a_budget_smaller_than_a_routes_max_body_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let body = "server: { max_buffered_bytes: 512KiB }\n".to_string() + HEADER_ROUTE;
    let file = write_config(dir.path(), "http://127.0.0.1:1", &body);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("server.max_buffered_bytes"), "{text}");
}

/// The proxy's resident memory stays within the budget plus a constant, whatever the storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_large_deliveries_stays_within_the_memory_budget() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let body = "upstream_timeout: 30s\nserver: { max_buffered_bytes: 16MiB }\ndefaults: { max_body: 1MiB }\n"
        .to_string()
        + HEADER_ROUTE;
    let file = write_config(dir.path(), &app.url(), &body);
    let child = ChildProxy::spawn(&file);
    let pid = child.child.id();
    let client = common::TestClient::new(child.proxy_addr);
    // Warm up (pools, the store, the allocator's arenas) before the baseline.
    for i in 0..20 {
        client.post("/hooks/a", &[("idempotency-key", &format!("warm{i}"))], &"w".repeat(1 << 20)).await;
    }
    let baseline = rss_kib(pid, "VmRSS");
    app.hold("storm");
    let big = Arc::new("s".repeat(1 << 20));
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let (client, big) = (client.clone(), big.clone());
            // Every delivery carries the held key or its own: the held ones pile up in the app.
            let key = if i % 2 == 0 { "storm".to_string() } else { format!("s{i}") };
            tokio::spawn(async move { client.post("/hooks/a", &[("idempotency-key", &key)], &big).await.status })
        })
        .collect();
    // The storm is on once the budget has refused a delivery while held ones wait in the app.
    let admin = common::TestClient::new(child.admin_addr);
    let piled_up = common::eventually(Duration::from_secs(20), || async {
        app.count("storm") >= 1 && admin.metric("idemgate_buffer_refusals_total").await >= 1.0
    })
    .await;
    assert!(piled_up, "the storm never reached the budget");
    app.release("storm");
    let mut refused = 0;
    for send in sends {
        match send.await.unwrap().as_u16() {
            200 | 409 => {}
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let peak = rss_kib(pid, "VmHWM");
    child.kill();
    let grown_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    println!("baseline {baseline} KiB, peak {peak} KiB, grown {grown_mib:.1} MiB, refused {refused}");
    assert!(refused > 0, "200 x 1 MiB cannot fit a 16 MiB budget");
    // The budget, plus what 200 connections' buffers and tasks take beside it.
    assert!(grown_mib < 16.0 + 24.0, "RSS grew {grown_mib:.1} MiB over a 16 MiB budget");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Kubelet's probes must get through whatever holds the admin port: idle connections, trickled
/// heads, and more connections than the port keeps alive.
#[tokio::test]
async fn probes_are_answered_beside_hundreds_of_idle_and_slow_admin_connections() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let admin = proxy.admin_addr;
    let mut hogs = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        if i % 3 == 0 {
            // A head that never ends.
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        hogs.push(stream);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            for hog in hogs.iter_mut().skip(1).step_by(3) {
                let _ = hog.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        hogs
    });
    for path in ["/healthz", "/readyz", "/healthz"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
        let answer = tokio::time::timeout(Duration::from_secs(1), raw(admin, request.as_bytes()))
            .await
            .unwrap_or_else(|_| panic!("{path} was not answered within a second"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    drop(trickle.await.unwrap());
}

#[test]
fn an_admin_token_from_the_environment_is_kept_exactly_as_written_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "http://127.0.0.1:1", HEADER_ROUTE);
    for token in ["1234567890", "0012345", "true", "1e3"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .args(["check", "--config", file.to_str().unwrap()])
            .env("IDEMGATE_ADMIN__TOKEN", token)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{token}: {text}");
        assert!(!text.contains(token), "check printed the token {token}: {text}");
    }
    // The token serves exactly as written: leading zeros and all.
    let child = ChildProxy::spawn_with(&file, &[("IDEMGATE_ADMIN__TOKEN", "0012345")]);
    let status = |token: &str| {
        let request = format!(
            "GET /admin/keys/hooks/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = runtime.block_on(raw(child.admin_addr, request.as_bytes()));
        answer.split_whitespace().nth(1).unwrap_or_default().to_string()
    };
    assert_eq!(status("0012345"), "404", "the right token finds no such key");
    assert_eq!(status("12345"), "401");
    child.kill();
}

/// A store that is locked when the app's answer is to be stored: the completion is retried
/// while the lease allows, the client gets the app's answer, and the duplicate its replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_at_completion_is_retried_not_forwarded_twice() {
    let app = TestApp::start().await;
    let proxy = Arc::new(TestProxy::start(&app, &format!("defaults: {{ lease: 40s }}\n{HEADER_ROUTE}")).await);
    app.hold("locked");
    let first = spawn_post(&proxy, &[("idempotency-key", "locked")], "");
    assert_eq!(app.arrival().await, "locked");
    // Another process takes the write lock while the app works.
    let lock = rusqlite::Connection::open(&proxy.db_path).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    app.release("locked");
    let retried = common::eventually(Duration::from_secs(30), || async {
        proxy.metric("idemgate_completion_retries_total").await >= 1.0
    })
    .await;
    assert!(retried, "the completion was never retried");
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let reply = first.await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(!reply.replayed());
    let duplicate = proxy.post("/hooks/a", &[("idempotency-key", "locked")], "").await;
    assert!(duplicate.replayed());
    assert_eq!(duplicate.body, reply.body);
    assert_eq!(app.count("locked"), 1);
}

/// Two reloads close together (a SIGHUP beside a file event) apply one after the other: the
/// config that serves is the file as it was last read, never an older read that finished late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_close_together_apply_in_order() {
    use idemgate::reload::{Trigger, digest};
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let route = |path: &str| {
        format!("routes:\n  - name: only\n    match: {{ path: {path} }}\n    key: {{ header: Idempotency-Key }}\n")
    };
    let (a, b) =
        (common::config_yaml(&app.url(), &db, &route("/a")), common::config_yaml(&app.url(), &db, &route("/b")));
    let file = dir.path().join("idemgate.yaml");
    std::fs::write(&file, &a).unwrap();
    let config = idemgate::config::load(&file).unwrap();
    let running = idemgate::server::start(config.clone()).await.unwrap();
    let client = common::TestClient::new(running.proxy_addr);
    let reloader = running.reloader(file.clone(), config, Some(digest(&a)));
    for i in 0..40 {
        let (to, path) = if i % 2 == 0 { (&b, "/b") } else { (&a, "/a") };
        let early = std::thread::spawn({
            let reloader = reloader.clone();
            move || reloader.reload(Trigger::Signal)
        });
        std::fs::write(&file, to).unwrap();
        let late = std::thread::spawn({
            let reloader = reloader.clone();
            move || reloader.reload(Trigger::Signal)
        });
        early.join().unwrap();
        late.join().unwrap();
        // Only the route of the file as written last protects its path (400 without a key).
        assert_eq!(client.post(path, &[], "").await.status, 400, "round {i}: an older config won");
    }
    running.shutdown().await;
}
