//! Signing deliveries as each provider documents it, for the preset tests.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};

pub fn mac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

pub fn mac1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub type Headers = Vec<(String, String)>;

fn h(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

pub fn github(key: &[u8], body: &[u8], _ts: i64, _url: &str) -> Headers {
    vec![h("X-Hub-Signature-256", format!("sha256={}", hex(&mac256(key, &[body]))))]
}

pub fn shopify(key: &[u8], body: &[u8], _ts: i64, _url: &str) -> Headers {
    vec![h("X-Shopify-Hmac-Sha256", b64(&mac256(key, &[body])))]
}

/// Shopify's unprefixed header name for the same signature (events webhooks, newer deliveries).
pub fn shopify_unprefixed(key: &[u8], body: &[u8], _ts: i64, _url: &str) -> Headers {
    vec![h("shopify-hmac-sha256", b64(&mac256(key, &[body])))]
}

pub fn stripe(key: &[u8], body: &[u8], ts: i64, _url: &str) -> Headers {
    let t = ts.to_string();
    vec![h("Stripe-Signature", format!("t={t},v1={}", hex(&mac256(key, &[t.as_bytes(), b".", body]))))]
}

pub fn slack(key: &[u8], body: &[u8], ts: i64, _url: &str) -> Headers {
    let t = ts.to_string();
    let sig = hex(&mac256(key, &[b"v0:", t.as_bytes(), b":", body]));
    vec![h("X-Slack-Request-Timestamp", t), h("X-Slack-Signature", format!("v0={sig}"))]
}

/// `whsec_` + the base64 of `key`, without the `=` padding (as some dashboards and copies show it).
pub fn whsec_unpadded(key: &[u8]) -> String {
    format!("whsec_{}", b64(key).trim_end_matches('='))
}

/// Standard Webhooks signing as the reference libraries do it: `v1,` + base64 of HMAC-SHA256 of
/// `{id}.{ts}.{body}`, keyed with the bytes the `whsec_` secret encodes.
pub fn standard(prefix: &str, id: &str, key: &[u8], body: &[u8], ts: i64) -> Headers {
    let t = ts.to_string();
    let sig = b64(&mac256(key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]));
    vec![
        h(&format!("{prefix}-id"), id),
        h(&format!("{prefix}-timestamp"), t),
        h(&format!("{prefix}-signature"), format!("v1,{sig}")),
    ]
}

pub fn standard_webhooks(key: &[u8], body: &[u8], ts: i64, _url: &str) -> Headers {
    standard("webhook", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", key, body, ts)
}

pub fn svix(key: &[u8], body: &[u8], ts: i64, _url: &str) -> Headers {
    standard("svix", "msg_svix_2KWPBgLlAfxdpx2AI54pPJ8", key, body, ts)
}

/// The URL Twilio called, then each POST parameter's name and value, sorted by name.
pub fn twilio(key: &[u8], body: &[u8], _ts: i64, url: &str) -> Headers {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    params.sort();
    let signed: String = params.iter().map(|(k, v)| format!("{k}{v}")).collect();
    vec![h("X-Twilio-Signature", b64(&mac1(key, &[url.as_bytes(), signed.as_bytes()])))]
}

/// GitLab's signing token: Standard Webhooks headers, `webhook-id` equal to `Idempotency-Key`.
pub fn gitlab_signing(key: &[u8], body: &[u8], ts: i64, _url: &str) -> Headers {
    let id = "f5e5f430-f57b-4e6e-9fac-d9128cd7232f";
    let mut headers = standard("webhook", id, key, body, ts);
    headers.push(h("Idempotency-Key", id));
    headers
}

pub fn gitlab(key: &[u8], _body: &[u8], _ts: i64, _url: &str) -> Headers {
    vec![h("X-Gitlab-Token", String::from_utf8(key.to_vec()).unwrap())]
}
