//! Hostile request shapes: smuggling, oversized heads, upgrades, hop-by-hop tricks, admin paths.

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy};

/// Sends raw bytes and reads until the proxy closes the connection (bounded).
async fn raw(proxy: &TestProxy, request: &[u8]) -> String {
    common::raw_exchange(proxy.proxy_addr, request).await
}

#[tokio::test]
async fn conflicting_or_malformed_lengths_are_refused_with_400() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let cases = [
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k2\r\nContent-Length: abc\r\n\r\n{}",
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k3\r\nContent-Length: -1\r\n\r\n{}",
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k4\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k5\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    ];
    for request in cases {
        let reply = raw(&proxy, request.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{request:?} -> {reply}");
    }
    assert_eq!(app.total(), 0, "nothing malformed reaches the app");
}

#[tokio::test]
async fn content_length_beside_transfer_encoding_is_read_as_chunked_and_the_connection_closed() {
    // RFC 9112 6.3: the server may reject the message, or process it as chunked and close the
    // connection afterwards. hyper does the latter, so no second request can be smuggled behind it.
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let request = "POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: te\r\nContent-Length: 4\r\n\
                   Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n\
                   POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: smuggled\r\nContent-Length: 2\r\n\r\n{}";
    let reply = raw(&proxy, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1").count(), 1, "one answer, then the connection closed: {reply}");
    assert_eq!(app.count("te"), 1);
    assert_eq!(app.deliveries()[0].body, "{}");
    assert_eq!(app.count("smuggled"), 0);
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let big = "a".repeat(70 * 1024);
    let request = format!("POST /hooks/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\r\nX-Big: {big}\r\n\r\n");
    let reply = raw(&proxy, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{}", &reply[..reply.len().min(200)]);
    assert_eq!(app.total(), 0);
}

#[tokio::test]
async fn upgrades_are_refused_on_protected_routes() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let reply = proxy
        .post("/hooks/a", &[("idempotency-key", "up"), ("connection", "upgrade"), ("upgrade", "websocket")], "{}")
        .await;
    assert_eq!(reply.assert_problem(400), "urn:idemgate:problem:upgrade-refused");
    assert_eq!(app.total(), 0);
    // Elsewhere the request passes, without the hop-by-hop Upgrade.
    let passed = proxy.client.send("GET", "/other", &[("connection", "upgrade"), ("upgrade", "websocket")], "").await;
    assert_eq!(passed.status, 200);
    assert!(app.deliveries()[0].headers.get("upgrade").is_none());
}

#[tokio::test]
async fn connection_nominated_headers_cannot_strip_what_the_proxy_adds() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let headers =
        [("idempotency-key", "nominated"), ("connection", "x-idempotency-key, x-forwarded-for, idempotency-key")];
    assert_eq!(proxy.post("/hooks/a", &headers, "{}").await.status, 200);
    let delivery = &app.deliveries()[0];
    assert_eq!(delivery.key, "nominated", "the forwarded key header is added after hop-by-hop removal");
    assert!(delivery.headers.get("x-forwarded-for").is_some());
}

#[tokio::test]
async fn admin_key_paths_cannot_traverse() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    proxy.post("/hooks/a", &[("idempotency-key", "k")], "{}").await;
    for path in
        ["/admin/keys/../../etc/passwd", "/admin/keys/hooks/..%2F..%2Fk", "/admin/keys/%2e%2e/k", "/admin/keys/hooks"]
    {
        let reply = proxy.admin.get(path).await;
        assert_eq!(reply.status.as_u16(), 404, "{path}: {:?}", reply.body);
    }
    assert_eq!(proxy.admin.get("/admin/keys/hooks/k").await.status, 200);
}
