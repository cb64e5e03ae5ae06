//! Route matching that cannot be bypassed (issue 14). Every spelling of a route's path that an app
//! framework would route to the same handler (other case, a trailing slash, path parameters, a
//! trailing `/.`, percent-encoded letters, all at once) is the route: without a key it gets 400 and
//! the app sees nothing; with one it is forwarded once, byte for byte, and then replayed. A dot
//! segment behind a parameter (`..;`) is 400. `path_prefix` matches whole segments. With
//! `unmatched: reject` nothing else reaches the app. Raw sockets, so that no client normalizes the
//! request line first.

mod common;

use common::{TestApp, TestClient, TestProxy, config_yaml};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = "routes:
  - name: github
    match: { path: /webhooks/github, methods: [POST] }
    key: { header: Idempotency-Key }
  - name: stripe
    match: { path_prefix: /webhooks/stripe }
    key: { header: Idempotency-Key }
  - name: api
    match: { path_prefix: /api/ }
    key: { header: Idempotency-Key }
  - name: strict
    match: { path: /Strict/Path, case_sensitive: true }
    key: { header: Idempotency-Key }
";

/// Spellings of the github route (POST /webhooks/github) that an app may route to its handler.
const GITHUB_SHAPES: &[&str] = &[
    "/webhooks/github",
    "/webhooks/github/",
    "/Webhooks/GitHub",
    "/WEBHOOKS/GITHUB/",
    "/webhooks/github;x=1",
    "/webhooks/github;jsessionid=ABC/",
    "/webhooks/github;",
    "/webhooks/github;/",
    "/webhooks/github/;",
    "/webhooks/github/;x=1",
    "/webhooks/github/.",
    "/webhooks/github/./",
    "/webhooks/github//",
    "/webhooks;a=b/github",
    "/webhooks/;x/github",
    "/;x=1/webhooks/github",
    "/webhooks/%67ithub",
    "/Webhooks/%67ithub;x=1/",
    "/WebHooks/%47itHub;a=1;b=2/.",
    "/x/../Webhooks/GitHub/",
    "/webhooks/x/%2e%2e/github;v=1",
    "/webhooks/github/x/..",
    "/webhooks/github;x=1/x/%2e%2E/",
];

/// A dot segment hidden behind a parameter: servers disagree about it, so it is refused.
const DOT_PARAM_SHAPES: &[&str] = &[
    "/x/..;/webhooks/github",
    "/x/..;x=1/webhooks/github",
    "/x/.;/..;/webhooks/github",
    "/..;/webhooks/github",
    "/x/%2e%2e;/webhooks/github",
    "/x/%2E%2e;x=1/webhooks/github",
    "/webhooks/github/.;",
    "/webhooks/stripe/..;/x",
    "/webhooks/github;x=1/x/..;y=2/",
];

/// Not the route: neighbours that must stay neighbours.
const NEIGHBOURS: &[&str] = &[
    "/webhooks/githubx",
    "/webhooks/github/x",
    "/webhooks/github%3Bx=1",
    "/webhooks/stripe-legacy",
    "/webhooks/stripex/y",
    "/webhooks",
    "/apix",
    "/strict/path",
    "/STRICT/PATH",
];

/// One response, read from a connection the proxy closes (`Connection: close`).
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn problem(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        Some(v["type"].as_str()?.trim_start_matches("urn:idemgate:problem:").to_string())
    }
}

/// Sends `method path` with `headers` (whole lines) and a `{}` body on a fresh connection.
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Raw {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("the proxy answers and closes")
        .ok();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: no response: {text:?}"));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    Raw { status, head: head.to_string(), body: body.to_string() }
}

fn key(k: &str) -> String {
    format!("Idempotency-Key: {k}\r\n")
}

async fn start(app: &TestApp, top: &str) -> TestProxy {
    TestProxy::start(app, &format!("{top}{ROUTES}")).await
}

#[tokio::test]
async fn every_spelling_of_a_route_without_a_key_gets_400_and_the_app_sees_nothing() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    let mut failures = Vec::new();
    for path in GITHUB_SHAPES {
        let reply = raw(proxy.proxy_addr, "POST", path, "").await;
        if reply.status != 400 || reply.problem().as_deref() != Some("missing-key") {
            failures.push(format!("{path}: {} {}", reply.status, reply.body));
        }
    }
    // Lower-case methods are methods an app may upper-case (Werkzeug does).
    for method in ["post", "Post"] {
        let reply = raw(proxy.proxy_addr, method, "/Webhooks/GitHub/", "").await;
        if reply.status != 400 {
            failures.push(format!("{method} /Webhooks/GitHub/: {} {}", reply.status, reply.body));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(app.total(), 0, "the app saw {:?}", app.deliveries());
}

#[tokio::test]
async fn every_spelling_with_a_key_is_forwarded_once_as_it_arrived_then_replayed() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    for (i, path) in GITHUB_SHAPES.iter().enumerate() {
        let k = format!("shape-{i}");
        let first = raw(proxy.proxy_addr, "POST", path, &key(&k)).await;
        assert_eq!(first.status, 200, "{path}: {}", first.body);
        assert_eq!(first.header("idempotent-replayed"), None, "{path}");
        let delivered: Vec<_> = app.deliveries().into_iter().filter(|d| d.key == k).collect();
        assert_eq!(delivered.len(), 1, "{path}");
        assert_eq!(delivered[0].path_and_query, *path, "forwarded byte for byte");
        assert_eq!(delivered[0].headers["x-idempotency-key"], k.as_str());
        // The same spelling again, and the plain one: one route, one key.
        for again in [*path, "/webhooks/github"] {
            let replay = raw(proxy.proxy_addr, "POST", again, &key(&k)).await;
            assert_eq!(replay.status, 200, "{again}");
            assert_eq!(replay.header("idempotent-replayed"), Some("true"), "{path} then {again}");
        }
        assert_eq!(app.count(&k), 1, "{path}");
    }
}

#[tokio::test]
async fn a_dot_segment_behind_a_parameter_is_400_never_a_pass_through() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    for path in DOT_PARAM_SHAPES {
        for headers in [String::new(), key("dot-param")] {
            let reply = raw(proxy.proxy_addr, "POST", path, &headers).await;
            assert_eq!((reply.status, reply.problem().as_deref()), (400, Some("bad-path")), "{path}: {}", reply.body);
        }
    }
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn prefixes_match_whole_segments_in_every_spelling() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    let stripe = [
        "/webhooks/stripe",
        "/webhooks/stripe/",
        "/webhooks/stripe/x",
        "/Webhooks/Stripe;v=2/evt",
        "/webhooks/%73tripe/x;y",
        "/api",
        "/API/",
        "/api;x/v1/orders",
    ];
    for path in stripe {
        let reply = raw(proxy.proxy_addr, "PUT", path, "").await;
        assert_eq!(reply.problem().as_deref(), Some("missing-key"), "{path}: {}", reply.body);
    }
    assert_eq!(app.total(), 0);
}

/// Java's `equalsIgnoreCase` and .NET's `OrdinalIgnoreCase` take `ſ` for `s` and the Kelvin sign
/// for `k`; raw or encoded, they are the route (or refused by the HTTP parser), never a pass-through.
#[tokio::test]
async fn non_ascii_letters_whose_case_is_ascii_are_the_route() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    for path in ["/webhooks/%C5%BFtripe", "/webhooks/%c5%bftripe/x", "/webhooks/\u{17F}tripe", "/webhooks/g%C4%B1thub"]
    {
        let reply = raw(proxy.proxy_addr, "POST", path, "").await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
    }
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn neighbours_and_other_methods_pass_through_untouched_by_default() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    for path in NEIGHBOURS {
        let reply = raw(proxy.proxy_addr, "POST", path, &key("neighbour")).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(app.deliveries().last().unwrap().path_and_query, *path);
    }
    // GET is not on the github route, in any spelling: it passes through too.
    let reply = raw(proxy.proxy_addr, "GET", "/Webhooks/GitHub;x=1/", "").await;
    assert_eq!(reply.status, 200);
    // Passed through: no key forwarded, nothing stored, nothing replayed.
    assert!(app.deliveries().iter().all(|d| d.key.is_empty()));
    assert_eq!(app.total(), NEIGHBOURS.len() + 1);
}

#[tokio::test]
async fn a_case_sensitive_route_still_ignores_slashes_parameters_and_dots() {
    let app = TestApp::start().await;
    let proxy = start(&app, "").await;
    for path in ["/Strict/Path", "/Strict/Path/", "/Strict/Path;x=1/.", "/Strict/%50ath"] {
        let reply = raw(proxy.proxy_addr, "POST", path, "").await;
        assert_eq!(reply.problem().as_deref(), Some("missing-key"), "{path}: {}", reply.body);
    }
    assert_eq!(app.total(), 0);
    let reply = raw(proxy.proxy_addr, "POST", "/strict/path", "").await;
    assert_eq!(reply.status, 200, "another case is another path to a case-sensitive route");
    assert_eq!(app.total(), 1);
}

#[tokio::test]
async fn unmatched_reject_answers_404_and_the_app_sees_nothing() {
    let app = TestApp::start().await;
    let proxy = start(&app, "unmatched: reject\n").await;
    let mut cases: Vec<(&str, &str)> = NEIGHBOURS.iter().map(|p| ("POST", *p)).collect();
    // A method the route does not list, in any spelling.
    cases.extend([("GET", "/webhooks/github"), ("DELETE", "/Webhooks/GitHub/"), ("GET", "/"), ("OPTIONS", "*")]);
    for (method, path) in &cases {
        let reply = raw(proxy.proxy_addr, method, path, &key("unmatched")).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/problem+json"));
        assert_eq!(reply.problem().as_deref(), Some("no-route"), "{method} {path}");
    }
    assert_eq!(app.total(), 0, "the app saw {:?}", app.deliveries());
    let rejected = proxy.metric(r#"idemgate_requests_total{route="-",outcome="rejected"}"#).await;
    assert_eq!(rejected, cases.len() as f64);

    // Matched routes work as ever, in every spelling.
    let first = raw(proxy.proxy_addr, "POST", "/Webhooks/GitHub;x=1/", &key("matched")).await;
    assert_eq!(first.status, 200);
    let again = raw(proxy.proxy_addr, "POST", "/webhooks/github", &key("matched")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.count("matched"), 1);
    let missing = raw(proxy.proxy_addr, "POST", "/webhooks/github/", "").await;
    assert_eq!(missing.problem().as_deref(), Some("missing-key"));
    let bad = raw(proxy.proxy_addr, "POST", "/x/..;/y", "").await;
    assert_eq!(bad.problem().as_deref(), Some("bad-path"));
    assert_eq!(app.total(), 1);
}

#[tokio::test]
async fn unmatched_reloads_with_the_routes() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idemgate.yaml");
    let db = dir.path().join("idemgate.db");
    let write = |top: &str| std::fs::write(&file, config_yaml(&app.url(), &db, &format!("{top}{ROUTES}"))).unwrap();
    write("unmatched: pass\n");
    let config = idemgate::config::load(&file).unwrap();
    let running = idemgate::server::start(config.clone()).await.unwrap();
    let reloader = running.reloader(file.clone(), config, None);
    let client = TestClient::new(running.proxy_addr);

    assert_eq!(client.get("/elsewhere").await.status, 200);
    write("unmatched: reject\n");
    reloader.reload(idemgate::reload::Trigger::Signal);
    client.get("/elsewhere").await.assert_problem(404);
    write("");
    reloader.reload(idemgate::reload::Trigger::Signal);
    assert_eq!(client.get("/elsewhere").await.status, 200, "pass is the default");
    assert_eq!(app.total(), 2);
    running.shutdown().await;
}

/// `idemgate check` on `routes`; its exit code and stderr.
fn check(routes: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, format!("upstream: {{ url: http://127.0.0.1:3000 }}\nroutes:\n{routes}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["check", "--config", file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_warns_about_a_route_an_earlier_route_shadows() {
    let route = |name: &str, matcher: &str| format!("  - {{ name: {name}, match: {matcher}, key: {{ header: K }} }}\n");
    let shadowed = [
        (route("all", "{ path_prefix: /webhooks }") + &route("github", "{ path: /webhooks/github }"), "github"),
        (route("a", "{ path: /x/ }") + &route("b", "{ path: /X, methods: [POST] }"), "b"),
        (
            route("a", "{ path_prefix: /x, methods: [POST, PUT] }")
                + &route("b", "{ path_prefix: /x/y, methods: [PUT] }"),
            "b",
        ),
        (route("a", "{ path: /x }") + &route("b", "{ path: /X, case_sensitive: true }"), "b"),
    ];
    for (routes, later) in shadowed {
        let (code, stderr) = check(&routes);
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains(&format!("warning: route {later}: never matches")), "{routes}\n{stderr}");
    }
    let fine = [
        route("github", "{ path: /webhooks/github }") + &route("all", "{ path_prefix: /webhooks }"),
        route("stripe", "{ path_prefix: /webhooks/stripe }") + &route("legacy", "{ path: /webhooks/stripe-legacy }"),
        route("a", "{ path_prefix: /x, methods: [POST] }") + &route("b", "{ path: /x/y }"),
        route("a", "{ path: /x, case_sensitive: true }") + &route("b", "{ path: /X }"),
        route("a", "{ path: /x }") + &route("b", "{ path_prefix: /x }"),
    ];
    for routes in fine {
        let (code, stderr) = check(&routes);
        assert_eq!((code, stderr.as_str()), (0, ""), "{routes}");
    }
}

#[test]
fn unmatched_is_pass_or_reject() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    for (value, ok) in [("pass", true), ("reject", true), ("drop", false)] {
        std::fs::write(&file, format!("upstream: {{ url: http://127.0.0.1:3000 }}\nunmatched: {value}\n")).unwrap();
        let result = idemgate::config::load(&file);
        assert_eq!(result.is_ok(), ok, "{value}: {:?}", result.err());
    }
}
