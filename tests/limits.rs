//! Malformed keys, bodies and paths, and the server's own limits.

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITED: &str = "defaults: { max_body: 1KiB, max_key_length: 10 }
routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
  - name: json
    match: { path: /json }
    key: { json: /id }
";

#[tokio::test]
async fn malformed_keys_get_400_and_never_reach_the_app() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, LIMITED).await;
    let deep = "[".repeat(600);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("/hooks/a", vec![], "{}", "missing-key"),
        ("/hooks/a", vec![("idempotency-key", "0123456789x")], "{}", "invalid-key"),
        ("/hooks/a", vec![("idempotency-key", "a b")], "{}", "invalid-key"),
        ("/hooks/a", vec![("idempotency-key", "a"), ("idempotency-key", "b")], "{}", "invalid-key"),
        ("/json", vec![], "not json", "invalid-key"),
        ("/json", vec![], r#"{"id":true}"#, "invalid-key"),
        ("/json", vec![], r#"{"id":1.5}"#, "invalid-key"),
        ("/json", vec![], r#"{"id":{"x":1}}"#, "invalid-key"),
        ("/json", vec![], r#"{"id":"a","id":"b"}"#, "invalid-key"),
        ("/json", vec![], r#"{"other":"a"}"#, "missing-key"),
        ("/json", vec![], &deep, "invalid-key"),
    ];
    for (path, headers, body, kind) in cases {
        let reply = proxy.post(path, &headers, body).await;
        assert_eq!(reply.assert_problem(400), format!("urn:idemgate:problem:{kind}"), "{path} {headers:?} {body}");
    }
    assert_eq!(app.total(), 0);
    assert_eq!(proxy.metric("idemgate_requests_total{route=\"json\",outcome=\"rejected\"}").await, 7.0);
}

#[tokio::test]
async fn a_key_that_is_not_ascii_gets_400() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, LIMITED).await;
    let raw = b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: caf\xc3\xa9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let reply = common::raw_exchange(proxy.proxy_addr, raw).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn bodies_over_max_body_get_413() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, LIMITED).await;
    let big = "x".repeat(1025);
    let reply = proxy.post("/hooks/a", &[("idempotency-key", "big")], &big).await;
    assert_eq!(reply.assert_problem(413), "urn:idemgate:problem:body-too-large");
    assert_eq!(proxy.post("/hooks/a", &[("idempotency-key", "fits")], &big[..1024]).await.status, 200);

    // A chunked body has no declared length: it is cut off once it passes the limit.
    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = common::raw_exchange(proxy.proxy_addr, chunked.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_eq!(app.count("big") + app.count("chunked"), 0);
}

/// A body read in one piece or in several reaches the app byte for byte; and the app's own 413
/// is its answer, passed on (and, not in `store_status`, the key released), not taken for
/// idemgate's body limit.
#[tokio::test]
async fn bodies_in_one_frame_or_many_reach_the_app_whole_and_the_apps_413_is_its_own() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, LIMITED).await;
    let one = proxy.post("/hooks/a", &[("idempotency-key", "one")], r#"{"n":1}"#).await;
    assert_eq!(one.status, 200);
    let chunked = "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: many\r\n\
                   Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n{\"n\"\r\n3\r\n:2}\r\n0\r\n\r\n";
    let reply = common::raw_exchange(proxy.proxy_addr, chunked.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let bodies: Vec<_> = app.deliveries().into_iter().map(|d| (d.key, d.body)).collect();
    assert!(bodies.contains(&("one".into(), bytes::Bytes::from_static(br#"{"n":1}"#))), "{bodies:?}");
    assert!(bodies.contains(&("many".into(), bytes::Bytes::from_static(br#"{"n":2}"#))), "{bodies:?}");

    for _ in 0..2 {
        let own = proxy.post("/hooks/a", &[("idempotency-key", "own413"), ("x-test-status", "413")], "{}").await;
        assert_eq!(own.status, 413);
        assert_eq!(own.header("content-type"), Some("application/json"), "the app's answer, not a problem");
    }
    assert_eq!(app.count("own413"), 2, "released each time, so forwarded again");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_without_reading_the_body() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, LIMITED).await;
    let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    // Only the head is sent: the 413 must come without waiting for 10 MB that never arrive.
    let head = "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\r\nContent-Length: 10000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let reply = read_some(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn normalized_path_variants_hit_the_route_and_unsafe_paths_get_400() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: github
    match: { path: /webhooks/github }
    key: { header: X-GitHub-Delivery }
";
    let proxy = TestProxy::start(&app, routes).await;
    let variants = [
        "/webhooks/github",
        "//webhooks/github",
        "/webhooks//github",
        "/webhooks/%67ithub",
        "/webhooks/./github",
        "/x/../webhooks/github",
        "/webhooks/%2e/github",
        "/webhooks/github?x=1",
    ];
    for path in variants {
        let reply = proxy.post(path, &[("x-github-delivery", "same")], "{}").await;
        assert_eq!(reply.status, 200, "{path}");
    }
    assert_eq!(app.count("same"), 1, "every variant is the github route: one forward, then replays");
    for path in variants {
        let reply = proxy.post(path, &[], "{}").await;
        assert_eq!(reply.assert_problem(400), "urn:idemgate:problem:missing-key", "{path} is protected");
    }
    for path in ["/webhooks%2fgithub", "/webhooks/%zzgithub", "/webhooks/github%", "/../webhooks/github"] {
        let reply = common::raw_exchange(
            proxy.proxy_addr,
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{path}: {reply}");
        assert!(reply.contains("bad-path"), "{path}: {reply}");
    }
    assert_eq!(app.total(), 1, "unsafe paths never pass through");
}

#[tokio::test]
async fn slow_request_heads_are_dropped_after_header_read_timeout() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &format!("server: {{ header_read_timeout: 200ms }}\n{HEADER_ROUTE}")).await;
    let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    stream.write_all(b"POST /hooks/a HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // The connection is closed by the proxy; the read ends (EOF or a 408) instead of hanging.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert_eq!(app.total(), 0);
}

/// The timeout runs only while a head is awaited: an app slower than it is waited for, and the
/// connection then carries the next request.
#[tokio::test]
async fn a_slow_answer_does_not_count_against_header_read_timeout() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &format!("server: {{ header_read_timeout: 200ms }}\n{HEADER_ROUTE}")).await;
    let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    for key in ["slow-1", "slow-2"] {
        let request = format!(
            "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\nx-test-delay-ms: 700\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(app.total(), 2);
}

/// An answer streamed by the app with pauses longer than the timeout is not cut: the next head
/// is awaited only once the answer is done.
#[tokio::test]
async fn a_streamed_answer_with_long_pauses_does_not_count_against_header_read_timeout() {
    // An app that answers every request in two chunks, 600 ms apart.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = conn.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                        if conn.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        if conn.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idemgate.db");
    let proxy =
        TestProxy::start_in(dir, db, &upstream, &format!("server: {{ header_read_timeout: 200ms }}\n{HEADER_ROUTE}"))
            .await;
    let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    for _ in 0..2 {
        stream.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !answer.ends_with(b"0\r\n\r\n") {
            let n =
                tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("answer").unwrap();
            assert!(n > 0, "closed mid-answer: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200") && text.contains("first") && text.contains("second"), "{text}");
    }
}

/// After an answer, the next head is awaited for the timeout and no longer: an idle keep-alive
/// connection is closed, and so is one trickling its second head.
#[tokio::test]
async fn kept_alive_connections_are_closed_when_the_next_head_is_late() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &format!("server: {{ header_read_timeout: 300ms }}\n{HEADER_ROUTE}")).await;
    for trickle in [false, true] {
        let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
        stream.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(read_answer(&mut stream).await.starts_with("HTTP/1.1 200"));
        let answered = std::time::Instant::now();
        if trickle {
            stream.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the connection was not closed (trickle: {trickle})");
        // Not closed early: the answer was written before it was read, so allow for that gap.
        assert!(answered.elapsed() >= Duration::from_millis(200), "closed after {:?}", answered.elapsed());
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "no second answer");
    }
    assert_eq!(app.total(), 2);
}

/// A client that sends its head and then trickles (or withholds) its body gets 408 once
/// `server.body_read_timeout` has passed; nothing is claimed and the app sees nothing.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_claims_nothing() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &format!("server: {{ body_read_timeout: 300ms }}\n{HEADER_ROUTE}")).await;
    let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    stream
        .write_all(
            b"POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: slow-body\r\nContent-Length: 10\r\n\r\n{\"a\"",
        )
        .await
        .unwrap();
    let answer = read_some(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert_eq!(app.total(), 0);
    assert_eq!(proxy.admin.get("/admin/keys/hooks/slow-body").await.status, 404, "nothing claimed");
    assert_eq!(proxy.metric(r#"idemgate_requests_total{route="hooks",outcome="rejected"}"#).await, 1.0);
    // The same delivery sent whole goes through.
    let whole = proxy.post("/hooks/a", &[("idempotency-key", "slow-body")], r#"{"a":1}"#).await;
    assert_eq!(whole.status, 200);
}

#[tokio::test]
async fn connections_over_max_connections_wait_for_a_free_slot() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, &format!("server: {{ max_connections: 1 }}\n{HEADER_ROUTE}")).await;
    let mut first = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    first.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_some(&mut first).await.starts_with("HTTP/1.1 200"));
    // The first connection stays open (keep-alive) and holds the only slot.
    let mut second = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    second.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "the second connection must not be served while the first holds the slot");
    drop(first);
    assert!(read_some(&mut second).await.starts_with("HTTP/1.1 200"));
}

/// One whole answer with a `Content-Length` body, read off a connection that stays open.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("answer").unwrap();
        assert!(n > 0, "closed before a whole answer: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_some(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.expect("answer").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
