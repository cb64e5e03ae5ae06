//! Live reload of the real binary: a change of the config file (replaced, edited in place, or a
//! Kubernetes-style `..data` symlink swap) or SIGHUP swaps the routes without failing a request
//! or dropping a connection; an invalid file is refused and the running routes stay.

mod common;

use bytes::Bytes;
use common::child::{ChildProxy, write_config};
use common::{TestApp, TestClient, sign};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const ROUTE_A: &str = "routes:
  - name: a
    match: { path_prefix: /hooks/a }
    key: { header: Idempotency-Key }
";

const ROUTES_A_AND_B: &str = "routes:
  - name: a
    match: { path_prefix: /hooks/a }
    key: { header: Idempotency-Key }
  - name: b
    match: { path_prefix: /hooks/b }
    key: { header: Idempotency-Key }
";

const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Writes the file next to `file` and renames it over `file`, as a careful deploy tool does.
fn replace(file: &Path, contents: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn wait_for_log(proxy: &ChildProxy, message: &str) -> serde_json::Value {
    tokio::task::block_in_place(|| proxy.wait_for_log(message, RELOAD_WAIT))
}

/// Is `/hooks/{route}` protected: is a second delivery of a new key replayed?
async fn protected(client: &TestClient, path: &str, key: &str) -> bool {
    let headers = [("idempotency-key", key)];
    client.post(path, &headers, "{}").await;
    client.post(path, &headers, "{}").await.replayed()
}

/// Requests on one kept-alive connection until `stop`; counts answers, fails on anything else.
async fn steady_traffic(
    addr: std::net::SocketAddr,
    worker: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let req = http::Request::post("/hooks/a/steady")
            .header("host", "idemgate")
            .header("idempotency-key", format!("steady-{worker}-{n}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        // The same connection throughout: a reload must not close it.
        let resp = sender.send_request(req).await.map_err(|e| format!("request {n} failed: {e}"))?;
        let status = resp.status();
        resp.into_body().collect().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("request {n} got {status}"));
        }
        ok.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_file_swaps_routes_under_traffic_without_a_failed_request() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), &app.url(), ROUTE_A);
    let proxy = ChildProxy::spawn(&file);
    let client = TestClient::new(proxy.proxy_addr);
    let admin = TestClient::new(proxy.admin_addr);
    assert!(!protected(&client, "/hooks/b", "b-before").await, "no route b yet: passed through");

    let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> =
        (0..4).map(|w| tokio::spawn(steady_traffic(proxy.proxy_addr, w, stop.clone(), ok.clone()))).collect();
    // Traffic is flowing before the change.
    while ok.load(Ordering::Relaxed) < 50 {
        tokio::task::yield_now().await;
    }
    let before = ok.load(Ordering::Relaxed);
    replace(&file, &std::fs::read_to_string(&file).unwrap().replace(ROUTE_A, ROUTES_A_AND_B));
    let line = wait_for_log(&proxy, "config reloaded");
    assert_eq!(line["routes"], 2, "{line}");
    assert!(protected(&client, "/hooks/b", "b-after").await, "route b serves from the reload on");
    // And traffic goes on after it.
    let after_reload = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < after_reload + 50 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap().expect("no request failed and no connection closed");
    }
    assert!(after_reload > before, "requests were answered while the reload happened");
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="applied"}"#).await, 1.0);
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="refused"}"#).await, 0.0);
    // The new route has its own series.
    assert_eq!(admin.metric(r#"idemgate_requests_total{route="b",outcome="replayed"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_and_the_running_routes_stay() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), &app.url(), ROUTE_A);
    let good = std::fs::read_to_string(&file).unwrap();
    let proxy = ChildProxy::spawn(&file);
    let client = TestClient::new(proxy.proxy_addr);
    let admin = TestClient::new(proxy.admin_addr);

    // Edited in place, with a mistake.
    std::fs::write(&file, good.replace(ROUTE_A, &ROUTES_A_AND_B.replace("/hooks/b }", "/hooks/b }\n    ttl: forever")))
        .unwrap();
    let line = wait_for_log(&proxy, "config reload refused");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("routes[1].ttl") && error.contains("line "), "names the field and its place: {error}");
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="refused"}"#).await, 1.0);
    assert!(protected(&client, "/hooks/a", "a-kept").await, "the running routes stay");
    assert!(!protected(&client, "/hooks/b", "b-not-yet").await);

    // The fix is picked up.
    std::fs::write(&file, good.replace(ROUTE_A, ROUTES_A_AND_B)).unwrap();
    wait_for_log(&proxy, "config reloaded");
    assert!(protected(&client, "/hooks/b", "b-now").await);
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="applied"}"#).await, 1.0);
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="refused"}"#).await, 1.0, "counted once");
}

/// Kubernetes mounts a ConfigMap as `name -> ..data/name`, `..data -> ..<timestamp>`, and updates
/// it by writing a new timestamped directory and renaming a new `..data` symlink over the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_symlink_swap_is_picked_up() {
    let app = TestApp::start().await;
    let data = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    let first = write_config(data.path(), &app.url(), ROUTE_A);
    let config = std::fs::read_to_string(&first).unwrap();
    std::fs::create_dir(m.join("..2026_11_27_01")).unwrap();
    std::fs::write(m.join("..2026_11_27_01/idemgate.yaml"), &config).unwrap();
    std::os::unix::fs::symlink("..2026_11_27_01", m.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/idemgate.yaml", m.join("idemgate.yaml")).unwrap();
    let proxy = ChildProxy::spawn(&m.join("idemgate.yaml"));
    let client = TestClient::new(proxy.proxy_addr);
    assert!(!protected(&client, "/hooks/b", "b-before").await);

    std::fs::create_dir(m.join("..2026_11_27_02")).unwrap();
    std::fs::write(m.join("..2026_11_27_02/idemgate.yaml"), config.replace(ROUTE_A, ROUTES_A_AND_B)).unwrap();
    std::os::unix::fs::symlink("..2026_11_27_02", m.join("..data_tmp")).unwrap();
    std::fs::rename(m.join("..data_tmp"), m.join("..data")).unwrap();
    std::fs::remove_dir_all(m.join("..2026_11_27_01")).unwrap();

    let line = wait_for_log(&proxy, "config reloaded");
    assert_eq!(line["routes"], 2, "{line}");
    assert!(protected(&client, "/hooks/b", "b-after").await);
}

/// SIGHUP reloads even an unchanged file: a `verify` secret read from a file is read again, so a
/// rotated secret takes effect without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_picks_up_a_rotated_secret_file() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("github-secret");
    std::fs::write(&secret, "old-secret\n").unwrap();
    let routes = format!(
        "routes:
  - name: github
    match: {{ path: /hooks/github }}
    key: {{ header: X-GitHub-Delivery }}
    verify: {{ scheme: github, secret: 'file:{}' }}
",
        secret.display()
    );
    let file = write_config(dir.path(), &app.url(), &routes);
    let proxy = ChildProxy::spawn(&file);
    let client = TestClient::new(proxy.proxy_addr);
    let admin = TestClient::new(proxy.admin_addr);
    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let delivery = |key: &'static str, id: &'static str| {
        let mut headers = sign::github(key.as_bytes(), body.as_bytes(), 0, "");
        headers.push(("X-GitHub-Delivery".to_string(), id.to_string()));
        headers
    };
    let post = |headers: Vec<(String, String)>| {
        let client = client.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client.post("/hooks/github", &headers, body).await.status
        }
    };
    assert_eq!(post(delivery("old-secret", "d1")).await, 200);

    std::fs::write(&secret, "new-secret\n").unwrap();
    assert_eq!(post(delivery("new-secret", "d2")).await, 401, "read at start, not per request");
    proxy.signal("HUP");
    wait_for_log(&proxy, "config reloaded");
    assert_eq!(post(delivery("new-secret", "d3")).await, 200);
    assert_eq!(post(delivery("old-secret", "d4")).await, 401);
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="applied"}"#).await, 1.0);
}

/// Listen addresses, the store and the other sections bound at start cannot change live: a reload
/// applies the routes and says which sections wait for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_need_a_restart_are_reported_not_ignored() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), &app.url(), ROUTE_A);
    let config = std::fs::read_to_string(&file).unwrap();
    let proxy = ChildProxy::spawn(&file);
    let client = TestClient::new(proxy.proxy_addr);
    let changed = config
        .replace("timeout: 2s", "timeout: 3s")
        .replace("idemgate.db", "elsewhere.db")
        .replace(ROUTE_A, ROUTES_A_AND_B);
    assert_ne!(changed, config.replace(ROUTE_A, ROUTES_A_AND_B), "the edit changed upstream and store");
    replace(&file, &changed);
    let line = wait_for_log(&proxy, "config reloaded; changes to these sections");
    assert_eq!(line["restart_needed"], "upstream, store", "{line}");
    assert_eq!(line["level"], "WARN");
    assert!(protected(&client, "/hooks/b", "b").await, "the routes changed all the same");
    assert!(!dir.path().join("elsewhere.db").exists(), "the running store stays");
}

/// The database beside the config (the default layout of a container with one volume) writes on
/// every request: the watch must not wake for those writes, and files written whole beside the
/// config wake it but never reload it. Only the saves of the config are changes.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beside_the_config_neither_wake_the_watch_nor_reload() {
    use idemgate::reload::{digest, watch_file};
    use std::io::Write;
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), &app.url(), ROUTE_A);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&dir.path().join("idemgate.db").display().to_string()), "the database is beside it");
    let config = idemgate::config::load(&file).unwrap();
    let running = idemgate::server::start(config.clone()).await.unwrap();
    let reloader = running.reloader(file.clone(), config, Some(digest(&text)));
    // A log file kept open beside the config, from before the watch.
    let mut log = std::fs::File::create(dir.path().join("idemgate.log")).unwrap();
    let watch = watch_file(reloader.clone()).unwrap();
    let client = TestClient::new(running.proxy_addr);
    let admin = TestClient::new(running.admin_addr);
    let applied = r#"idemgate_config_reloads_total{result="applied"}"#;
    let reloads = |n: f64| {
        let admin = admin.clone();
        async move {
            let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
            while admin.metric(applied).await != n {
                assert!(tokio::time::Instant::now() < deadline, "no reload {n}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // The database's writes: a claim and a completion per new key, to files SQLite keeps open;
    // and lines to the log.
    for i in 0..500 {
        assert_eq!(client.post("/hooks/a/x", &[("idempotency-key", &format!("k{i}"))], "{}").await.status, 200);
        writeln!(log, "line {i}").unwrap();
    }
    assert!(std::fs::metadata(dir.path().join("idemgate.db-wal")).unwrap().len() > 0, "the database wrote");
    // A save of the config: queued after every event the writes above could have caused.
    replace(&file, &text.replace(ROUTE_A, ROUTES_A_AND_B));
    reloads(1.0).await;
    // Not once per write: the save's 4 events (the temporary file created, closed, moved away, the
    // config moved in), and the 2 of each of the store's size counts (a connection of its own that
    // opens and closes the WAL, at start and every 30 s).
    assert!(reloader.events_seen() <= 8, "woke {} times for 500 requests", reloader.events_seen());
    assert_eq!(reloader.changes_seen(), 1);

    // Files written whole beside the config wake the watch (each ends with a close), but are no change.
    let before = reloader.events_seen();
    for i in 0..50 {
        std::fs::write(dir.path().join("notes.txt"), format!("{i}")).unwrap();
    }
    replace(&file, &text);
    reloads(2.0).await;
    let woke = reloader.events_seen() - before;
    assert!(woke > 4, "the notes woke it, besides the save's 4 events: {woke}");
    assert_eq!(reloader.changes_seen(), 2, "only the saves were changes");
    assert_eq!(admin.metric(r#"idemgate_config_reloads_total{result="refused"}"#).await, 0.0);
    assert!(protected(&client, "/hooks/a", "a-after").await && !protected(&client, "/hooks/b", "b-gone").await);
    drop(watch);
    running.shutdown().await;
}
