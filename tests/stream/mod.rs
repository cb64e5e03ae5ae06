//! Seeded delivery streams: realistic provider traffic drawn from a seed, the app that receives
//! it, the providers that send it, and the checks of what idemgate made of it. Shared by
//! tests/streams.rs (idemgate in-process, always up) and tests/chaos.rs (the real binary, under
//! faults).
//!
//! Time has two scales. Seconds-scale things (client timeouts, the app's latency, immediate
//! retries) run in real milliseconds. Days-scale things (the ttl, redeliveries hours or days
//! later) are compressed: the routes' ttl stands for 7 days, so one simulated day is
//! `Profile::day_ms` real milliseconds (streams: ttl 1500 ms, one day = 214 ms).
#![allow(dead_code)]

pub mod app;
pub mod check;
pub mod drive;
pub mod generate;
pub mod history;
pub mod model;
pub mod record;
pub mod report;
pub mod request;
pub mod rng;

/// The routes a stream is delivered to, one per [`model::Provider`], with the ttl (standing for
/// 7 days) and any other policy fields in `defaults`.
pub fn routes(defaults: &str) -> String {
    format!(
        "defaults: {{ {defaults} }}
routes:
  - name: github
    match: {{ path: /webhooks/github, methods: [POST] }}
    key: {{ header: X-GitHub-Delivery }}
    scope: {{ header: X-GitHub-Hook-ID }}
  - name: stripe
    match: {{ path_prefix: /webhooks/stripe }}
    key: {{ json: /id }}
    concurrent: wait
  - name: shopify
    match: {{ path: /webhooks/shopify }}
    key: {{ header: X-Shopify-Webhook-Id }}
    fingerprint: {{ json: [/id, /total_price] }}
  - name: twilio
    match: {{ path: /webhooks/twilio/status }}
    key: {{ all: [ {{ form: MessageSid }}, {{ form: MessageStatus }} ] }}
  - name: api
    match: {{ path_prefix: /api/, methods: [POST] }}
    key: [ {{ header: Idempotency-Key }}, {{ query: idempotency_key }} ]
    scope: {{ header: Authorization }}
    fingerprint: body
"
    )
}
