//! First deliveries, replays of completed keys, released keys, and what is stored and replayed.

mod common;

use common::{HEADER_ROUTE, TestApp, TestProxy};

#[tokio::test]
async fn first_delivery_is_forwarded_and_its_duplicate_replayed_byte_for_byte() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let headers = [("idempotency-key", "k1"), ("x-test-header", "x-app=one"), ("x-test-header", "set-cookie=a=1")];

    let first = proxy.post("/hooks/a", &headers, r#"{"event":1}"#).await;
    assert_eq!(first.status, 200);
    assert!(!first.replayed());
    assert_eq!(first.json()["n"], 1);

    let second = proxy.post("/hooks/a", &headers, r#"{"event":1}"#).await;
    assert_eq!(second.status, 200);
    assert!(second.replayed());
    assert_eq!(second.body, first.body, "the replay carries the stored body exactly");
    assert_eq!(second.header("x-app"), Some("one"));
    assert_eq!(second.header("set-cookie"), Some("a=1"));
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(app.count("k1"), 1, "the app sees the event once");
}

#[tokio::test]
async fn the_app_receives_the_request_as_sent_with_the_extracted_key() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let body = "{\"id\": \"evt\",\n \"x\": [1, 2]}\r\n";
    let reply = proxy
        .post(
            "/hooks//a?x=1&y=%2F",
            &[("idempotency-key", "k-sent"), ("x-idempotency-key", "spoofed"), ("x-custom", "v")],
            body,
        )
        .await;
    assert_eq!(reply.status, 200);
    let delivery = &app.deliveries()[0];
    assert_eq!(delivery.key, "k-sent", "forward_key_header replaces the client's copy");
    assert_eq!(delivery.headers.get_all("x-idempotency-key").iter().count(), 1);
    assert_eq!(delivery.body, body.as_bytes(), "the body is forwarded byte for byte");
    assert_eq!(delivery.path_and_query, "/hooks//a?x=1&y=%2F", "the request is forwarded as it arrived");
    assert_eq!(delivery.headers["x-custom"], "v");
    assert_eq!(delivery.headers["idempotency-key"], "k-sent");
}

#[tokio::test]
async fn statuses_outside_store_status_release_the_key() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    for status in ["500", "503", "429", "408", "401", "404"] {
        let key = format!("k-{status}");
        let failed = proxy.post("/hooks/a", &[("idempotency-key", &key), ("x-test-status", status)], "{}").await;
        assert_eq!(failed.status.as_str(), status, "the client gets the app's answer");
        assert!(!failed.replayed());
        let retry = proxy.post("/hooks/a", &[("idempotency-key", &key)], "{}").await;
        assert_eq!(retry.status, 200);
        assert!(!retry.replayed(), "a released key is forwarded again");
        assert_eq!(app.count(&key), 2);
        let third = proxy.post("/hooks/a", &[("idempotency-key", &key)], "{}").await;
        assert!(third.replayed());
        assert_eq!(app.count(&key), 2);
    }
}

#[tokio::test]
async fn store_status_can_include_other_statuses() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
    store_status: [2xx, 409, 422]
";
    let proxy = TestProxy::start(&app, routes).await;
    let headers = [("idempotency-key", "k"), ("x-test-status", "422")];
    assert_eq!(proxy.post("/hooks/a", &headers, "{}").await.status, 422);
    let again = proxy.post("/hooks/a", &headers, "{}").await;
    assert_eq!(again.status, 422);
    assert!(again.replayed());
    assert_eq!(app.count("k"), 1);
}

#[tokio::test]
async fn hop_by_hop_headers_are_never_stored_or_replayed() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    let headers = [
        ("idempotency-key", "hop"),
        ("x-test-header", "connection=x-private"),
        ("x-test-header", "x-private=secret"),
        ("x-test-header", "keep-alive=timeout=99"),
        ("x-test-header", "x-public=ok"),
    ];
    let first = proxy.post("/hooks/a", &headers, "{}").await;
    let replay = proxy.post("/hooks/a", &headers, "{}").await;
    assert!(replay.replayed());
    for reply in [&first, &replay] {
        assert_eq!(reply.header("x-private"), None, "named by Connection: hop-by-hop");
        assert_eq!(reply.header("keep-alive"), None);
        assert_eq!(reply.header("x-public"), Some("ok"));
    }
}

#[tokio::test]
async fn oversized_responses_complete_the_key_and_replay_status_and_headers_only() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
    max_response_body: 1KiB
";
    let proxy = TestProxy::start(&app, routes).await;
    let headers = [("idempotency-key", "big"), ("x-test-body-size", "100000"), ("x-test-header", "x-big=yes")];
    let first = proxy.post("/hooks/a", &headers, "{}").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 100_000, "the first client gets the whole body");
    assert_eq!(&first.body[..3], b"abc");
    let replay = proxy.post("/hooks/a", &headers, "{}").await;
    assert!(replay.replayed());
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("x-big"), Some("yes"));
    assert!(replay.body.is_empty(), "the replay of an oversized response carries no body");
    assert_eq!(app.count("big"), 1);

    let small = [("idempotency-key", "small"), ("x-test-body-size", "1024")];
    assert_eq!(proxy.post("/hooks/a", &small, "{}").await.body.len(), 1024);
    assert_eq!(proxy.post("/hooks/a", &small, "{}").await.body.len(), 1024, "exactly the limit is stored");
}

#[tokio::test]
async fn unmatched_requests_pass_through_untouched_and_are_not_deduplicated() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    for _ in 0..2 {
        let reply = proxy.post("/elsewhere", &[("idempotency-key", "same")], "body").await;
        assert_eq!(reply.status, 200);
        assert!(!reply.replayed());
    }
    let get = proxy.client.get("/hooks-not-a-prefix").await;
    assert_eq!(get.status, 200);
    let deliveries = app.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert_eq!(deliveries[0].key, "", "no key header is added on pass-through");
    assert_eq!(proxy.metric("idemgate_requests_total{route=\"-\",outcome=\"passthrough\"}").await, 3.0);
}

#[tokio::test]
async fn methods_restrict_a_route() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: posts
    match: { path: /hooks/a, methods: [POST] }
    key: { header: Idempotency-Key }
";
    let proxy = TestProxy::start(&app, routes).await;
    // A GET is not on the route: passed through, no key needed.
    assert_eq!(proxy.client.get("/hooks/a").await.status, 200);
    assert_eq!(proxy.post("/hooks/a", &[], "{}").await.assert_problem(400), "urn:idemgate:problem:missing-key");
}

#[tokio::test]
async fn first_matching_route_wins() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: specific
    match: { path: /hooks/special }
    key: { header: X-Special }
  - name: general
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";
    let proxy = TestProxy::start(&app, routes).await;
    assert_eq!(proxy.post("/hooks/special", &[("x-special", "s1")], "{}").await.status, 200);
    assert_eq!(app.deliveries()[0].key, "s1");
    assert_eq!(proxy.post("/hooks/other", &[("x-special", "s1")], "{}").await.status, 400);
}

#[tokio::test]
async fn keys_from_json_form_query_and_composites() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: stripe
    match: { path: /stripe }
    key: { json: /id }
  - name: twilio
    match: { path: /twilio }
    key: { all: [ { form: MessageSid }, { form: MessageStatus } ] }
  - name: api
    match: { path: /api }
    key: [ { header: Idempotency-Key }, { query: idempotency_key } ]
";
    let proxy = TestProxy::start(&app, routes).await;
    let stripe = r#"{"id":"evt_123","type":"invoice.paid","data":{"object":{"id":"in_1"}}}"#;
    assert!(!proxy.post("/stripe", &[], stripe).await.replayed());
    assert!(proxy.post("/stripe", &[], stripe).await.replayed());
    assert_eq!(app.count("evt_123"), 1);

    let numeric = r#"{"id":42}"#;
    proxy.post("/stripe", &[], numeric).await;
    assert_eq!(app.count("42"), 1);

    let form = [("content-type", "application/x-www-form-urlencoded")];
    proxy.post("/twilio", &form, "MessageSid=SM1&MessageStatus=sent&To=%2B1").await;
    proxy.post("/twilio", &form, "MessageStatus=sent&MessageSid=SM1").await;
    proxy.post("/twilio", &form, "MessageSid=SM1&MessageStatus=delivered").await;
    assert_eq!(app.count("SM1:sent"), 1, "the composite key is the same in any field order");
    assert_eq!(app.count("SM1:delivered"), 1, "another status is another event");

    proxy.post("/api?idempotency_key=q1", &[], "{}").await;
    assert!(proxy.post("/api?idempotency_key=q1", &[], "{}").await.replayed());
    proxy.post("/api?idempotency_key=q1", &[("idempotency-key", "h1")], "{}").await;
    assert_eq!(app.count("q1"), 1);
    assert_eq!(app.count("h1"), 1, "the header comes first in the list");
}

#[tokio::test]
async fn a_structured_field_string_is_the_same_key() {
    let app = TestApp::start().await;
    let proxy = TestProxy::start(&app, HEADER_ROUTE).await;
    proxy.post("/hooks/a", &[("idempotency-key", "\"abc\"")], "{}").await;
    assert!(proxy.post("/hooks/a", &[("idempotency-key", "abc")], "{}").await.replayed());
    assert_eq!(app.count("abc"), 1);
}

#[tokio::test]
async fn scopes_namespace_keys() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: github
    match: { path: /github }
    key: { header: X-GitHub-Delivery }
    scope: { header: X-GitHub-Hook-ID }
";
    let proxy = TestProxy::start(&app, routes).await;
    let hook = |id| [("x-github-delivery", "d1"), ("x-github-hook-id", id)];
    assert!(!proxy.post("/github", &hook("1"), "{}").await.replayed());
    assert!(!proxy.post("/github", &hook("2"), "{}").await.replayed(), "another hook is another scope");
    assert!(proxy.post("/github", &hook("1"), "{}").await.replayed());
    assert_eq!(app.count("d1"), 2);
    let missing = proxy.post("/github", &[("x-github-delivery", "d1")], "{}").await;
    assert_eq!(missing.assert_problem(400), "urn:idemgate:problem:missing-scope");

    // The scope value is kept only as a digest.
    let (_dir, db) = proxy.stop().await;
    let conn = rusqlite::Connection::open(db).unwrap();
    let scopes: Vec<String> = conn
        .prepare("SELECT scope FROM records WHERE route <> 'idemgate:meta'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(scopes.len(), 2);
    for scope in scopes {
        assert_eq!(scope.len(), 64, "a sha-256 hex digest, not the value: {scope}");
        assert!(scope != "1" && scope != "2");
    }
}

#[tokio::test]
async fn a_reused_key_with_another_payload_gets_422() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: body
    match: { path: /body }
    key: { header: Idempotency-Key }
    fingerprint: body
  - name: json
    match: { path: /json }
    key: { header: Idempotency-Key }
    fingerprint: { json: [/amount] }
";
    let proxy = TestProxy::start(&app, routes).await;
    let key = [("idempotency-key", "pay-1")];
    assert_eq!(proxy.post("/body", &key, r#"{"amount":5}"#).await.status, 200);
    assert!(proxy.post("/body", &key, r#"{"amount":5}"#).await.replayed());
    let other = proxy.post("/body", &key, r#"{"amount":6}"#).await;
    assert_eq!(other.assert_problem(422), "urn:idemgate:problem:payload-mismatch");

    let key = [("idempotency-key", "pay-2")];
    assert_eq!(proxy.post("/json", &key, r#"{"amount":5,"at":1}"#).await.status, 200);
    assert!(proxy.post("/json", &key, r#"{"at":2, "amount": 5}"#).await.replayed(), "only /amount counts");
    proxy.post("/json", &key, r#"{"amount":7}"#).await.assert_problem(422);
    assert_eq!(app.total(), 2);
    assert_eq!(proxy.metric("idemgate_requests_total{route=\"body\",outcome=\"mismatch\"}").await, 1.0);
}

#[tokio::test]
async fn missing_key_forward_passes_through_unprotected() {
    let app = TestApp::start().await;
    let routes = "defaults: { missing_key: forward }
routes:
  - name: hooks
    match: { path_prefix: /hooks/ }
    key: { header: Idempotency-Key }
";
    let proxy = TestProxy::start(&app, routes).await;
    for _ in 0..2 {
        let reply = proxy.post("/hooks/a", &[], "payload").await;
        assert_eq!(reply.status, 200);
        assert!(!reply.replayed());
    }
    assert_eq!(app.total(), 2);
    assert_eq!(app.deliveries()[1].body, "payload");
}
