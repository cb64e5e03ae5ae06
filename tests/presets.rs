//! Provider presets through the proxy: real-shaped deliveries signed with test secrets by each
//! provider's documented algorithm. A valid delivery is forwarded once and replayed; a forged,
//! stale, tampered or unsigned one gets 401, claims nothing and never reaches the app.

mod common;

use common::sign::{self, Headers};
use common::{TestApp, TestProxy};
use std::path::Path;

/// One provider: its preset, a fixture body, the headers it sends besides the signature, the key
/// the app should see, and how it signs.
struct Provider {
    preset: &'static str,
    fixture: &'static str,
    content_type: &'static str,
    headers: &'static [(&'static str, &'static str)],
    key: &'static str,
    sign: fn(&[u8], &[u8], i64, &str) -> Headers,
    /// The secret as configured, when it is not the raw key (Standard Webhooks' `whsec_`).
    secret_text: fn(&[u8]) -> String,
    timestamped: bool,
    body_signed: bool,
}

fn raw(key: &[u8]) -> String {
    String::from_utf8(key.to_vec()).unwrap()
}

fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", sign::b64(key))
}

const TWILIO_URL: &str = "https://example.com/webhooks/twilio?src=sms";

const PROVIDERS: &[Provider] = &[
    Provider {
        preset: "github",
        fixture: "github-push.json",
        content_type: "application/json",
        headers: &[("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"), ("X-GitHub-Hook-ID", "292430182")],
        key: "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        sign: sign::github,
        secret_text: raw,
        timestamped: false,
        body_signed: true,
    },
    Provider {
        preset: "stripe",
        fixture: "stripe-invoice.paid.json",
        content_type: "application/json; charset=utf-8",
        headers: &[],
        key: "evt_1PzTestInvoicePaid0001",
        sign: sign::stripe,
        secret_text: raw,
        timestamped: true,
        body_signed: true,
    },
    Provider {
        preset: "shopify",
        fixture: "shopify-orders-create.json",
        content_type: "application/json",
        headers: &[
            ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
            ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            ("X-Shopify-Topic", "orders/create"),
        ],
        key: "98880550-7158-44d4-b7cd-2c97c8a091b5",
        sign: sign::shopify,
        secret_text: raw,
        timestamped: false,
        body_signed: true,
    },
    Provider {
        preset: "slack",
        fixture: "slack-event_callback.json",
        content_type: "application/json",
        headers: &[],
        key: "Ev123ABC456",
        sign: sign::slack,
        secret_text: raw,
        timestamped: true,
        body_signed: true,
    },
    Provider {
        preset: "standard-webhooks",
        fixture: "standard-webhooks.json",
        content_type: "application/json",
        headers: &[],
        key: "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        sign: sign::standard_webhooks,
        secret_text: whsec,
        timestamped: true,
        body_signed: true,
    },
    Provider {
        preset: "svix",
        fixture: "svix.json",
        content_type: "application/json",
        headers: &[],
        key: "msg_svix_2KWPBgLlAfxdpx2AI54pPJ8",
        sign: sign::svix,
        secret_text: whsec,
        timestamped: true,
        body_signed: true,
    },
    Provider {
        preset: "twilio",
        fixture: "twilio-status.form",
        content_type: "application/x-www-form-urlencoded",
        headers: &[("I-Twilio-Idempotency-Token", "e4b3c1a7-2f0d-4a43-9bb5-0c4a3f1d2e10")],
        key: "e4b3c1a7-2f0d-4a43-9bb5-0c4a3f1d2e10",
        sign: sign::twilio,
        secret_text: raw,
        timestamped: false,
        body_signed: true,
    },
    Provider {
        preset: "gitlab",
        fixture: "gitlab-push.json",
        content_type: "application/json",
        headers: &[("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"), ("X-Gitlab-Event", "Push Hook")],
        key: "13792a34-cac6-4fda-95a8-c58e00a3954e",
        sign: sign::gitlab,
        secret_text: raw,
        timestamped: false,
        body_signed: false,
    },
];

const SECRET: &[u8] = b"test-secret-for-idemgate-0123456789";
const OLD_SECRET: &[u8] = b"the-previous-secret-still-accepted";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(name)).unwrap()
}

fn now() -> i64 {
    idemgate::store::now_ms() / 1000
}

/// Starts a proxy with one route per provider, each verified with the secret files given.
async fn start(app: &TestApp, secrets: &[&[u8]]) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let mut routes = String::from("routes:\n");
    for p in PROVIDERS {
        let mut files = Vec::new();
        for (i, secret) in secrets.iter().enumerate() {
            let file = dir.path().join(format!("{}-{i}.secret", p.preset));
            // A trailing newline, as `echo` or a Kubernetes Secret file would leave it.
            std::fs::write(&file, format!("{}\n", (p.secret_text)(secret))).unwrap();
            files.push(format!("file:{}", file.display()));
        }
        let public_url = if p.preset == "twilio" { ", public_url: https://example.com" } else { "" };
        routes.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: /webhooks/{name} }}\n    preset: {name}\n    \
             verify: {{ secret: [{secrets}]{public_url} }}\n",
            name = p.preset,
            secrets = files.join(", "),
        ));
    }
    let db = dir.path().join("idemgate.db");
    TestProxy::start_in(dir, db, &app.url(), &routes).await
}

fn path(p: &Provider) -> String {
    if p.preset == "twilio" { "/webhooks/twilio?src=sms".into() } else { format!("/webhooks/{}", p.preset) }
}

/// Sends `body` as `p` would, signed with `key` at time `ts` (or unsigned).
async fn deliver(proxy: &TestProxy, p: &Provider, key: &[u8], body: &[u8], ts: i64, signed: bool) -> common::Reply {
    let signature = if signed { (p.sign)(key, body, ts, TWILIO_URL) } else { Vec::new() };
    send(proxy, p, signature, body).await
}

/// Sends `body` with the provider's headers and the given signature headers.
async fn send(proxy: &TestProxy, p: &Provider, signature: Headers, body: &[u8]) -> common::Reply {
    let mut headers: Vec<(String, String)> = p.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    headers.push(("content-type".into(), p.content_type.into()));
    headers.extend(signature);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    proxy.client.send("POST", &path(p), &headers, std::str::from_utf8(body).unwrap()).await
}

#[tokio::test]
async fn a_valid_delivery_is_forwarded_once_and_replayed() {
    let app = TestApp::start().await;
    let proxy = start(&app, &[SECRET]).await;
    for p in PROVIDERS {
        let body = fixture(p.fixture);
        let first = deliver(&proxy, p, SECRET, &body, now(), true).await;
        assert_eq!(first.status, 200, "{}: {:?}", p.preset, first.body);
        assert!(!first.replayed(), "{}", p.preset);
        let again = deliver(&proxy, p, SECRET, &body, now(), true).await;
        assert!(again.replayed(), "{}: the provider's retry is replayed", p.preset);
        assert_eq!(app.count(p.key), 1, "{}: the app sees the event once, keyed {}", p.preset, p.key);
    }
}

#[tokio::test]
async fn forged_stale_tampered_and_unsigned_deliveries_get_401_and_claim_nothing() {
    let app = TestApp::start().await;
    let proxy = start(&app, &[SECRET]).await;
    for p in PROVIDERS {
        let body = fixture(p.fixture);
        let mut attempts: Vec<(&str, common::Reply)> = vec![
            ("wrong secret", deliver(&proxy, p, b"an-attacker-guess", &body, now(), true).await),
            ("no signature", deliver(&proxy, p, SECRET, &body, now(), false).await),
        ];
        if p.timestamped {
            attempts.push(("stale", deliver(&proxy, p, SECRET, &body, now() - 3600, true).await));
            attempts.push(("future", deliver(&proxy, p, SECRET, &body, now() + 3600, true).await));
        }
        if p.body_signed {
            let signed = (p.sign)(SECRET, &body, now(), TWILIO_URL);
            let mut tampered = body.clone();
            let last = tampered.iter().rposition(|b| b.is_ascii_digit()).unwrap();
            tampered[last] = if tampered[last] == b'9' { b'8' } else { tampered[last] + 1 };
            let reply = send(&proxy, p, signed, &tampered).await;
            attempts.push(("tampered body", reply));
        }
        for (what, reply) in attempts {
            assert_eq!(reply.assert_problem(401), "urn:idemgate:problem:signature-invalid", "{}: {what}", p.preset);
            let detail = reply.json()["detail"].as_str().unwrap().to_string();
            assert!(!detail.contains("test-secret"), "{}: the secret leaked into {detail}", p.preset);
        }
        assert_eq!(app.count(p.key), 0, "{}: nothing forged reached the app", p.preset);
        // The forged copies claimed nothing: the real delivery of the same event goes through.
        let real = deliver(&proxy, p, SECRET, &body, now(), true).await;
        assert_eq!(real.status, 200, "{}", p.preset);
        assert!(!real.replayed(), "{}: a forgery cannot occupy the real event's key", p.preset);
        assert_eq!(app.count(p.key), 1, "{}", p.preset);
    }
    let unverified = proxy.metric("idemgate_requests_total{route=\"stripe\",outcome=\"unverified\"}").await;
    assert_eq!(unverified, 5.0, "wrong secret, unsigned, stale, future, tampered");
}

#[tokio::test]
async fn during_rotation_both_secrets_are_accepted() {
    let app = TestApp::start().await;
    let proxy = start(&app, &[SECRET, OLD_SECRET]).await;
    for p in PROVIDERS {
        let body = fixture(p.fixture);
        assert_eq!(deliver(&proxy, p, OLD_SECRET, &body, now(), true).await.status, 200, "{} old secret", p.preset);
        assert!(deliver(&proxy, p, SECRET, &body, now(), true).await.replayed(), "{} new secret", p.preset);
        assert_eq!(app.count(p.key), 1);
    }
}

#[tokio::test]
async fn without_verify_an_apps_401_releases_the_key_so_a_forgery_cannot_poison_it() {
    let app = TestApp::start().await;
    let routes = "routes:
  - name: stripe
    match: { path: /webhooks/stripe }
    preset: stripe
";
    let proxy = TestProxy::start(&app, routes).await;
    let body = String::from_utf8(fixture("stripe-invoice.paid.json")).unwrap();
    // The app checks signatures itself and refuses the forgery: the key is released.
    let forged = proxy.post("/webhooks/stripe", &[("x-test-status", "401")], &body).await;
    assert_eq!(forged.status, 401);
    let real = proxy.post("/webhooks/stripe", &[], &body).await;
    assert_eq!(real.status, 200);
    assert!(!real.replayed(), "the real delivery is processed, not answered with the forgery's 401");
    assert_eq!(app.count("evt_1PzTestInvoicePaid0001"), 2);
}

#[test]
fn check_lists_presets_without_secrets_and_warns_about_short_ttls() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "super-secret-value\n").unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: {{ url: http://127.0.0.1:3000 }}
routes:
  - name: stripe
    match: {{ path: /webhooks/stripe }}
    preset: stripe
    ttl: 1h
    verify: {{ secret: file:{} }}
",
            secret.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("key json /id"), "{stdout}");
    assert!(stdout.contains("verify"), "{stdout}");
    assert!(!stdout.contains("super-secret-value") && !stderr.contains("super-secret-value"));
    assert!(stderr.contains("shorter than the provider's retry window"), "{stderr}");

    std::fs::write(&config, "upstream: { url: http://x:1 }\nroutes:\n  - { name: s, match: { path: /s }, preset: stripe, verify: { secret: whsec_inline_value } }\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("verify.secret") || stderr.contains("secret"), "{stderr}");
    assert!(!stderr.contains("whsec_inline_value"), "an inline secret is never echoed: {stderr}");
}
