//! Providers' header and secret spellings through the real proxy and a real upstream app:
//! Shopify's unprefixed `shopify-*` headers (alone, beside the legacy `X-Shopify-*` ones, or
//! disagreeing with them), and `whsec_` secrets written without their base64 padding for
//! Standard Webhooks, Svix and GitLab's signing token. Deliveries are signed here with the hmac
//! crate as each provider's SDK signs them (see tests/common/sign.rs).

mod common;

use common::sign::{self, Headers};
use common::{Reply, TestApp, TestProxy};
use std::path::Path;

/// The Shopify app's client secret.
const SHOPIFY_SECRET: &[u8] = b"shpss_test-client-secret-for-idemgate";
/// 35 bytes: base64 ends in one `=`.
const SW_KEY: &[u8] = b"standard-webhooks-key-for-idemgate!";
/// 31 bytes: base64 ends in `==`.
const SVIX_KEY: &[u8] = b"svix-signing-key-for-idemgate-1";
/// 32 bytes, as GitLab generates a signing token's key: base64 ends in one `=`.
const GITLAB_KEY: &[u8] = b"gitlab-signing-token-key-32bytes";

const EVENT_ID: &str = "98880550-7158-44d4-b7cd-2c97c8a091b5";
const WEBHOOK_ID: &str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(name)).unwrap()
}

fn now() -> i64 {
    idemgate::store::now_ms() / 1000
}

/// One route per provider, each verified with its secret written as given (no padding for the
/// `whsec_` ones), from a file with a trailing newline.
async fn start(app: &TestApp) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("shopify", String::from_utf8(SHOPIFY_SECRET.to_vec()).unwrap()),
        ("standard-webhooks", sign::whsec_unpadded(SW_KEY)),
        ("svix", sign::whsec_unpadded(SVIX_KEY)),
        ("gitlab", sign::whsec_unpadded(GITLAB_KEY)),
    ];
    let mut routes = String::from("routes:\n");
    for (preset, secret) in secrets {
        assert!(preset == "shopify" || !secret.ends_with('='), "{secret}");
        let file = dir.path().join(format!("{preset}.secret"));
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        routes.push_str(&format!(
            "  - name: {preset}\n    match: {{ path: /webhooks/{preset} }}\n    preset: {preset}\n    \
             verify: {{ secret: file:{} }}\n",
            file.display()
        ));
    }
    let db = dir.path().join("idemgate.db");
    TestProxy::start_in(dir, db, &app.url(), &routes).await
}

async fn post(proxy: &TestProxy, preset: &str, headers: Headers, body: &str) -> Reply {
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    proxy.post(&format!("/webhooks/{preset}"), &headers, body).await
}

fn pairs(list: &[(&str, &str)]) -> Headers {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A Shopify delivery with these key/scope headers, signed with `key` under the signature headers
/// `sign` makes.
fn shopify(key: &[u8], body: &str, headers: &[(&str, &str)], sign: fn(&[u8], &[u8], i64, &str) -> Headers) -> Headers {
    let mut all = pairs(headers);
    all.extend(sign(key, body.as_bytes(), 0, ""));
    all
}

#[tokio::test]
async fn shopify_with_only_the_unprefixed_headers_is_verified_keyed_and_replayed() {
    let app = TestApp::start().await;
    let proxy = start(&app).await;
    let body = fixture("shopify-orders-create.json");
    let new_names = [("shopify-topic", "orders/create"), ("shopify-event-id", EVENT_ID)];
    let delivery = shopify(SHOPIFY_SECRET, &body, &new_names, sign::shopify_unprefixed);

    let first = post(&proxy, "shopify", delivery.clone(), &body).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert!(!first.replayed());
    let retry = post(&proxy, "shopify", delivery, &body).await;
    assert!(retry.replayed(), "Shopify's retry of the same event is replayed");
    assert_eq!(app.count(EVENT_ID), 1, "the app sees the event once, keyed by shopify-event-id");

    // The delivery id under its new name keys a delivery without an event id.
    let by_webhook_id = [("shopify-topic", "orders/create"), ("shopify-webhook-id", WEBHOOK_ID)];
    let reply =
        post(&proxy, "shopify", shopify(SHOPIFY_SECRET, &body, &by_webhook_id, sign::shopify_unprefixed), &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.count(WEBHOOK_ID), 1);

    // The scope is shopify-topic: the same event id under another topic is another delivery.
    let other_topic = [("shopify-topic", "orders/paid"), ("shopify-event-id", EVENT_ID)];
    let reply =
        post(&proxy, "shopify", shopify(SHOPIFY_SECRET, &body, &other_topic, sign::shopify_unprefixed), &body).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.replayed(), "scoped by shopify-topic");
    assert_eq!(app.count(EVENT_ID), 2);

    // Forged under the new name: 401, nothing claimed, never reaches the app.
    let forged =
        shopify(b"an-attacker-guess", &body, &[("shopify-event-id", "forged-event")], sign::shopify_unprefixed);
    let reply = post(&proxy, "shopify", forged, &body).await;
    assert_eq!(reply.assert_problem(401), "urn:idemgate:problem:signature-invalid");
    assert_eq!(app.count("forged-event"), 0);
}

#[tokio::test]
async fn shopify_with_legacy_or_both_spellings() {
    let app = TestApp::start().await;
    let proxy = start(&app).await;
    let body = fixture("shopify-orders-create.json");

    // Legacy names only, as before.
    let legacy = [("X-Shopify-Topic", "orders/create"), ("X-Shopify-Event-Id", "evt-legacy-only")];
    let reply = post(&proxy, "shopify", shopify(SHOPIFY_SECRET, &body, &legacy, sign::shopify), &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(app.count("evt-legacy-only"), 1);

    // Both spellings, as events webhooks send them: the same signature twice. The legacy key and
    // topic win over the unprefixed ones (whose topic is written in another form).
    let both = [
        ("X-Shopify-Topic", "orders/create"),
        ("X-Shopify-Event-Id", "evt-both"),
        ("shopify-topic", "ORDER"),
        ("shopify-event-id", "evt-both-unprefixed"),
    ];
    let signed_twice = |key: &[u8]| {
        let mut headers = shopify(key, &body, &both, sign::shopify);
        headers.extend(sign::shopify_unprefixed(key, body.as_bytes(), 0, ""));
        headers
    };
    let reply = post(&proxy, "shopify", signed_twice(SHOPIFY_SECRET), &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(app.count("evt-both"), 1);
    assert_eq!(app.count("evt-both-unprefixed"), 0);
    // The same event with only the legacy spelling is the same key and scope: replayed.
    let legacy_again = [("X-Shopify-Topic", "orders/create"), ("X-Shopify-Event-Id", "evt-both")];
    let reply = post(&proxy, "shopify", shopify(SHOPIFY_SECRET, &body, &legacy_again, sign::shopify), &body).await;
    assert!(reply.replayed());

    // Both signature headers, one valid and one not: ambiguous, whichever is the forged one.
    let valid = sign::shopify(SHOPIFY_SECRET, body.as_bytes(), 0, "").remove(0).1;
    let forged = sign::shopify(b"an-attacker-guess", body.as_bytes(), 0, "").remove(0).1;
    let key = [("X-Shopify-Topic", "orders/create"), ("X-Shopify-Event-Id", "evt-ambiguous")];
    for (legacy, unprefixed) in [(&valid, &forged), (&forged, &valid)] {
        let mut headers = pairs(&key);
        headers.push(("X-Shopify-Hmac-Sha256".into(), legacy.clone()));
        headers.push(("shopify-hmac-sha256".into(), unprefixed.clone()));
        let reply = post(&proxy, "shopify", headers, &body).await;
        assert_eq!(reply.assert_problem(401), "urn:idemgate:problem:signature-invalid");
        let detail = reply.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains("x-shopify-hmac-sha256 and shopify-hmac-sha256"), "{detail}");
        assert!(!detail.contains(&valid) && !detail.contains(&forged), "{detail}");
    }
    assert_eq!(app.count("evt-ambiguous"), 0, "an ambiguous delivery claims nothing and never reaches the app");
    let real = post(&proxy, "shopify", shopify(SHOPIFY_SECRET, &body, &key, sign::shopify), &body).await;
    assert_eq!(real.status, 200);
    assert!(!real.replayed());
}

#[tokio::test]
async fn unpadded_whsec_secrets_verify_standard_webhooks_svix_and_gitlab_signing_tokens() {
    let app = TestApp::start().await;
    let proxy = start(&app).await;
    let cases: [(&str, &[u8], String, Headers, &str); 3] = {
        let sw_body = fixture("standard-webhooks.json");
        let svix_body = fixture("svix.json");
        let gitlab_body = fixture("gitlab-push.json");
        let sw_id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
        let svix_id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        [
            (
                "standard-webhooks",
                SW_KEY,
                sw_body.clone(),
                sign::standard("webhook", sw_id, SW_KEY, sw_body.as_bytes(), now()),
                sw_id,
            ),
            (
                "svix",
                SVIX_KEY,
                svix_body.clone(),
                sign::standard("svix", svix_id, SVIX_KEY, svix_body.as_bytes(), now()),
                svix_id,
            ),
            (
                "gitlab",
                GITLAB_KEY,
                gitlab_body.clone(),
                sign::gitlab_signing(GITLAB_KEY, gitlab_body.as_bytes(), now(), ""),
                "f5e5f430-f57b-4e6e-9fac-d9128cd7232f",
            ),
        ]
    };
    for (preset, key, body, headers, id) in cases {
        let first = post(&proxy, preset, headers.clone(), &body).await;
        assert_eq!(first.status, 200, "{preset}: {:?}", first.body);
        assert!(post(&proxy, preset, headers, &body).await.replayed(), "{preset}");
        assert_eq!(app.count(id), 1, "{preset}");

        // Signed with the raw text of the secret instead of the key it encodes: refused.
        let wrong_key = sign::whsec_unpadded(key);
        let prefix = if preset == "svix" { "svix" } else { "webhook" };
        let forged = sign::standard(prefix, "msg_forged", wrong_key.as_bytes(), body.as_bytes(), now());
        let reply = post(&proxy, preset, forged, &body).await;
        assert_eq!(reply.assert_problem(401), "urn:idemgate:problem:signature-invalid", "{preset}");
        assert_eq!(app.count("msg_forged"), 0, "{preset}");
    }
}

fn check(secret_text: &str, scheme: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, format!("{secret_text}\n")).unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: {{ url: http://127.0.0.1:3000 }}\nroutes:\n  - name: hook\n    match: {{ path: /hook }}\n    \
             preset: {scheme}\n    verify: {{ secret: file:{} }}\n",
            secret.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn check_accepts_unpadded_secrets_and_refuses_a_gitlab_whsec_token_that_is_not_base64() {
    for scheme in ["standard-webhooks", "svix", "gitlab"] {
        let (code, stdout, stderr) = check(&sign::whsec_unpadded(GITLAB_KEY), scheme);
        assert_eq!(code, Some(0), "{scheme}: {stdout}{stderr}");
    }
    let token = "whsec_not*base64*at*all";
    let (code, stdout, stderr) = check(token, "gitlab");
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("verify.secret: starts with whsec_ but is not a GitLab signing token"), "{stderr}");
    assert!(!stderr.contains(token) && !stdout.contains(token), "the secret is never echoed: {stderr}");
    // A plain secret token (X-Gitlab-Token) is any text.
    let (code, stdout, stderr) = check("my plain secret token", "gitlab");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}
