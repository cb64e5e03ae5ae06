//! Provider presets: `preset: github` on a route fills in the provider's key, scope, signature
//! scheme and a ttl that covers its retry window. Any field set beside the preset overrides it.
//!
//! Each variant documents the provider pages its values come from. `retry_window` is the window
//! the provider documents (automatic retries, or manual redelivery where there are none);
//! `idemgate check` warns when a route's ttl is shorter. `ttl` is that window rounded up
//! generously: at least a day, and a week where redelivery can come days later.
//!
//! | preset | key | scope | retry window | ttl |
//! |---|---|---|---|---|
//! | github | `X-GitHub-Delivery` | `X-GitHub-Hook-ID` | 3 days (manual) | 7d |
//! | stripe | JSON `/id` | | 3 days | 7d |
//! | shopify | `X-Shopify-Event-Id`, else `X-Shopify-Webhook-Id` (¹) | `X-Shopify-Topic` (¹) | 4 hours | 2d |
//! | slack | JSON `/event_id`, else `/challenge`, else team + minute | | ~6 minutes | 1d |
//! | standard-webhooks | `webhook-id` | | ~76 hours (spec's example) | 7d |
//! | svix | `svix-id` | | ~27.6 hours | 7d |
//! | twilio | `I-Twilio-Idempotency-Token` | | 15 seconds | 1d |
//! | gitlab | `Idempotency-Key`, else `X-Gitlab-Event-UUID` | | 2 days (manual) | 7d |
//!
//! (¹) Each also under its unprefixed name (`shopify-event-id`, `shopify-webhook-id`,
//! `shopify-topic`), which is read when the `X-Shopify-` one is absent.

use crate::config::{Dur, KeySource, KeySpec, StaleAction, StaleConfig};
use crate::verify::{Scheme, StandardHeaders};
use std::time::Duration;

/// A provider whose conventions idemgate knows. In YAML: `preset: standard-webhooks`.
#[derive(serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// GitHub webhooks. `X-GitHub-Delivery` is a GUID "to identify the event", shared by every
    /// hook subscribed to the event, so the key is scoped by `X-GitHub-Hook-ID` ("the unique
    /// identifier of the webhook"). Signature `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>` of
    /// the body. GitHub does not retry failed deliveries; they can be redelivered by hand for 3
    /// days on github.com (7 on GitHub Enterprise Server, which the 7d ttl covers).
    /// Sources: <https://docs.github.com/en/webhooks/webhook-events-and-payloads#delivery-headers>,
    /// <https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>,
    /// <https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries>,
    /// <https://docs.github.com/en/webhooks/testing-and-troubleshooting-webhooks/redelivering-webhooks>.
    Github,
    /// Stripe. The event id (`evt_...`, JSON `/id`) identifies the event across retries.
    /// Signature `Stripe-Signature: t=..,v1=..`: HMAC-SHA256 of `{t}.{body}`, tolerance 5 minutes
    /// by default in Stripe's libraries. Live mode retries for up to 3 days with exponential
    /// backoff (sandboxes: three times over a few hours).
    /// Sources: <https://docs.stripe.com/webhooks#verify-manually>,
    /// <https://docs.stripe.com/webhooks#retries>, <https://docs.stripe.com/webhooks#handle-duplicate-events>.
    Stripe,
    /// Shopify. `X-Shopify-Event-Id` identifies the event ("the same value across more than one
    /// webhook indicates a duplicate"); the newer guide dedupes on the delivery id
    /// `X-Shopify-Webhook-Id`, used when the event id is absent. Scoped by `X-Shopify-Topic` so
    /// that one event id seen under two topics stays two deliveries. Signature
    /// `X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 of the body with the app's client secret.
    /// Shopify also sends these headers under unprefixed names (`shopify-hmac-sha256`,
    /// `shopify-event-id`, `shopify-topic`, ...): its events webhooks carry both spellings, newer
    /// deliveries may carry only the new one. Each is read when the `X-Shopify-` spelling is
    /// absent; when both are present the `X-Shopify-` one wins for the key and scope (so a
    /// delivery keeps the key it had before), and the two signature headers must be equal (see
    /// `verify::hmac`). The two topics need not be equal: events webhooks write `shopify-topic`
    /// in another form (`PRODUCT`), so agreement is not required of the key and scope headers,
    /// which the signature does not cover anyway.
    /// Retries: 8 times over 4 hours (since September 2024).
    /// Sources: <https://shopify.dev/docs/apps/build/webhooks/ignore-duplicates>,
    /// <https://shopify.dev/docs/apps/build/webhooks/verify-deliveries>,
    /// <https://shopify.dev/docs/apps/build/webhooks/delivery-structure#headers>,
    /// <https://shopify.dev/changelog/updates-to-webhook-retry-mechanism>, and Shopify's
    /// `@shopify/shopify-api` (`lib/webhooks/header-names.ts`, `validate.ts`: the events headers).
    Shopify,
    /// Slack Events API. `event_id` is unique across all workspaces, so no scope. The one-time
    /// `url_verification` request has no `event_id` and is keyed by its `challenge`;
    /// `app_rate_limited` notices by team and minute. Signature `X-Slack-Signature: v0=<hex>` over
    /// `v0:{X-Slack-Request-Timestamp}:{body}`, refused beyond five minutes. Failed deliveries are
    /// retried three times: nearly immediately, after 1 minute and after 5 minutes. Slash commands
    /// and interactivity payloads are form-encoded and carry no `event_id`: give such routes their
    /// own key (`scheme: slack` verifies them all the same).
    /// Sources: <https://api.slack.com/authentication/verifying-requests-from-slack>,
    /// <https://api.slack.com/apis/events-api#retries>, <https://api.slack.com/apis/events-api#callback-field>.
    Slack,
    /// Standard Webhooks 1.0: `webhook-id` is the idempotency key ("remains the same no matter how
    /// many times a webhook that has failed is retried"); `webhook-timestamp` and
    /// `webhook-signature` (`v1,<base64>` list, `whsec_` secret). The spec recommends retries over
    /// several days; its example schedule ends after 75 h 35 min.
    /// Source: <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>.
    StandardWebhooks,
    /// Svix: the Standard Webhooks scheme with `svix-` headers. `svix-id` "will be the same when
    /// the same webhook is being resent". Retries: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
    /// 10 h (about 27 h 35 min); messages can also be resent by hand later, hence 7d.
    /// Sources: <https://docs.svix.com/receiving/verifying-payloads/how-manual>, <https://docs.svix.com/retries>.
    Svix,
    /// Twilio. `I-Twilio-Idempotency-Token` is the same on a retried request. Signature
    /// `X-Twilio-Signature`: base64 HMAC-SHA1 (auth token) of the URL and sorted POST parameters,
    /// or of the URL with `bodySHA256` for JSON bodies. Twilio retries only on connection failure,
    /// within the request's total time (at most 15 s, connection overrides `rc`/`tt`).
    /// Sources: <https://www.twilio.com/docs/usage/webhooks/webhooks-security>,
    /// <https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides>,
    /// twilio-python's `RequestValidator` (ports, bodySHA256).
    Twilio,
    /// GitLab. `Idempotency-Key` (GitLab 17.4+) is "consistent across webhook retries", kept by a
    /// manual resend; older instances only send `X-Gitlab-Event-UUID`, unique per non-recursive
    /// webhook. `X-Gitlab-Token` carries the secret token as is; the newer signing token signs
    /// with Standard Webhooks headers (see `verify::gitlab`). GitLab does not retry failed
    /// deliveries automatically; they can be resent by hand from the recent events log.
    /// Sources: <https://docs.gitlab.com/user/project/integrations/webhooks/#delivery-headers>,
    /// <https://gitlab.com/gitlab-org/gitlab/-/merge_requests/230944> (signing token).
    Gitlab,
}

/// What a preset fills in on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetDefaults {
    pub key: KeySpec,
    /// The stale guard's sources where the provider's payload has them (`stale: preset`).
    pub stale: Option<StaleConfig>,
    pub scope: Option<KeySpec>,
    /// Covers the provider's retry window.
    pub ttl: Dur,
    /// The provider's documented retry window; `check` warns if a route's ttl is shorter.
    pub retry_window: Duration,
    pub scheme: Scheme,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

impl Preset {
    pub const ALL: [Preset; 8] = [
        Preset::Github,
        Preset::Stripe,
        Preset::Shopify,
        Preset::Slack,
        Preset::StandardWebhooks,
        Preset::Svix,
        Preset::Twilio,
        Preset::Gitlab,
    ];

    /// The name written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Github => "github",
            Preset::Stripe => "stripe",
            Preset::Shopify => "shopify",
            Preset::Slack => "slack",
            Preset::StandardWebhooks => "standard-webhooks",
            Preset::Svix => "svix",
            Preset::Twilio => "twilio",
            Preset::Gitlab => "gitlab",
        }
    }

    pub fn defaults(self) -> PresetDefaults {
        let (key, scope, retry, ttl, scheme) = match self {
            Preset::Github => {
                (header("X-GitHub-Delivery"), Some(header("X-GitHub-Hook-ID")), 3 * DAY, 7 * DAY, Scheme::github())
            }
            Preset::Stripe => (json("/id"), None, 3 * DAY, 7 * DAY, Scheme::Stripe),
            Preset::Shopify => (
                first_of([
                    header("X-Shopify-Event-Id"),
                    header("shopify-event-id"),
                    header("X-Shopify-Webhook-Id"),
                    header("shopify-webhook-id"),
                ]),
                Some(first_of([header("X-Shopify-Topic"), header("shopify-topic")])),
                4 * HOUR,
                2 * DAY,
                Scheme::shopify(),
            ),
            Preset::Slack => (slack_key(), None, 6 * MINUTE, DAY, Scheme::Slack),
            Preset::StandardWebhooks => (
                header("webhook-id"),
                None,
                75 * HOUR + 36 * MINUTE,
                7 * DAY,
                Scheme::StandardWebhooks(StandardHeaders::WEBHOOK),
            ),
            Preset::Svix => (
                header("svix-id"),
                None,
                27 * HOUR + 36 * MINUTE,
                7 * DAY,
                Scheme::StandardWebhooks(StandardHeaders::SVIX),
            ),
            Preset::Twilio => (header("I-Twilio-Idempotency-Token"), None, 15, DAY, Scheme::Twilio),
            Preset::Gitlab => (
                first_of([header("Idempotency-Key"), header("X-Gitlab-Event-UUID")]),
                None,
                2 * DAY,
                7 * DAY,
                Scheme::Gitlab,
            ),
        };
        PresetDefaults {
            key,
            stale: self.stale(),
            scope,
            ttl: Dur(Duration::from_secs(ttl)),
            retry_window: Duration::from_secs(retry),
            scheme,
        }
    }
}

/// `event_id` for events; the one-time `url_verification` has only a `challenge`, and an
/// `app_rate_limited` notice is one per team and minute.
fn slack_key() -> KeySpec {
    let rate_limited = KeySpec::One(KeySource::All(vec![json("/team_id"), json("/minute_rate_limited")]));
    first_of([json("/event_id"), json("/challenge"), rate_limited])
}

impl Preset {
    /// The entity and version a provider's events carry, for the stale guard: Stripe's object
    /// id and the event's `created` (seconds); Shopify's resource id and `X-Shopify-Triggered-At`
    /// (RFC 3339). None where the payload names no single entity.
    fn stale(self) -> Option<StaleConfig> {
        let guard = |entity, version| Some(StaleConfig { entity, version, action: StaleAction::Ack });
        match self {
            Preset::Stripe => guard(json("/data/object/id"), json("/created")),
            Preset::Shopify => {
                guard(json("/id"), first_of([header("X-Shopify-Triggered-At"), header("shopify-triggered-at")]))
            }
            _ => None,
        }
    }
}

fn header(name: &str) -> KeySpec {
    KeySpec::One(KeySource::Header(name.to_string()))
}

fn json(pointer: &str) -> KeySpec {
    KeySpec::One(KeySource::Json(pointer.to_string()))
}

fn first_of<const N: usize>(sources: [KeySpec; N]) -> KeySpec {
    KeySpec::FirstOf(sources.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyExtractor, RequestView};
    use crate::verify::{SecretList, SecretRef, Verifier, VerifyConfig};
    use bytes::Bytes;
    use http::{HeaderMap, HeaderName, HeaderValue};

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../tests/fixtures/webhooks/", $name)).as_slice()
        };
    }

    type Delivery =
        (Preset, &'static [u8], &'static [(&'static str, &'static str)], &'static str, Option<&'static str>);

    /// Each fixture with the headers its provider sends (as in tests/fixtures/webhooks/README.md),
    /// and the key and scope the preset must find in it.
    const DELIVERIES: &[Delivery] = &[
        (
            Preset::Github,
            fixture!("github-push.json"),
            &[("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"), ("X-GitHub-Hook-ID", "292430182")],
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            Some("292430182"),
        ),
        (Preset::Stripe, fixture!("stripe-invoice.paid.json"), &[], "evt_1PzTestInvoicePaid0001", None),
        (
            Preset::Shopify,
            fixture!("shopify-orders-create.json"),
            &[
                ("X-Shopify-Topic", "orders/create"),
                ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
                ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
            ],
            "98880550-7158-44d4-b7cd-2c97c8a091b5",
            Some("orders/create"),
        ),
        (
            Preset::Shopify,
            fixture!("shopify-orders-create.json"),
            &[("X-Shopify-Topic", "orders/create"), ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")],
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            Some("orders/create"),
        ),
        (
            Preset::Shopify,
            fixture!("shopify-orders-create.json"),
            &[("shopify-topic", "orders/create"), ("shopify-event-id", "98880550-7158-44d4-b7cd-2c97c8a091b5")],
            "98880550-7158-44d4-b7cd-2c97c8a091b5",
            Some("orders/create"),
        ),
        (
            Preset::Shopify,
            fixture!("shopify-orders-create.json"),
            &[("shopify-topic", "orders/create"), ("shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")],
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            Some("orders/create"),
        ),
        (
            // Both spellings: the X-Shopify- ones win, whatever the unprefixed ones say.
            Preset::Shopify,
            fixture!("shopify-orders-create.json"),
            &[
                ("shopify-topic", "ORDER"),
                ("shopify-event-id", "evt-unprefixed"),
                ("X-Shopify-Topic", "orders/create"),
                ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
            ],
            "98880550-7158-44d4-b7cd-2c97c8a091b5",
            Some("orders/create"),
        ),
        (
            // An event id under the new name beats a webhook id under the old one.
            Preset::Shopify,
            fixture!("shopify-orders-create.json"),
            &[
                ("X-Shopify-Topic", "orders/create"),
                ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
                ("shopify-event-id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
            ],
            "98880550-7158-44d4-b7cd-2c97c8a091b5",
            Some("orders/create"),
        ),
        (Preset::Slack, fixture!("slack-event_callback.json"), &[], "Ev123ABC456", None),
        (
            Preset::Slack,
            fixture!("slack-url_verification.json"),
            &[],
            "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            None,
        ),
        (
            Preset::Slack,
            br#"{"token":"XXYYZZ","type":"app_rate_limited","team_id":"T123ABC456","minute_rate_limited":1518467820,"api_app_id":"A123ABC456"}"#,
            &[],
            "T123ABC456:1518467820",
            None,
        ),
        (
            Preset::StandardWebhooks,
            fixture!("standard-webhooks.json"),
            &[("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W")],
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            None,
        ),
        (Preset::Svix, fixture!("svix.json"), &[("svix-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")], "msg_p5jXN8AQM9LWM0D4loKWxJek", None),
        (
            Preset::Twilio,
            fixture!("twilio-status.form"),
            &[("I-Twilio-Idempotency-Token", "5a8d1f4e-2b7c-4c61-9e0a-3f2d6b8c7e91")],
            "5a8d1f4e-2b7c-4c61-9e0a-3f2d6b8c7e91",
            None,
        ),
        (
            Preset::Gitlab,
            fixture!("gitlab-push.json"),
            &[
                ("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
                ("Idempotency-Key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
            ],
            "f5e5f430-f57b-4e6e-9fac-d9128cd7232f",
            None,
        ),
        (
            Preset::Gitlab,
            fixture!("gitlab-push.json"),
            &[("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e")],
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
            None,
        ),
    ];

    #[test]
    fn names_round_trip_through_yaml() {
        for preset in Preset::ALL {
            assert_eq!(serde_saphyr::from_str::<Preset>(preset.name()).unwrap(), preset);
        }
        assert!(serde_saphyr::from_str::<Preset>("bitbucket").is_err());
    }

    #[test]
    fn defaults_compile_and_cover_the_retry_window() {
        let whsec = std::ffi::OsString::from("whsec_c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5");
        for preset in Preset::ALL {
            let d = preset.defaults();
            KeyExtractor::compile(&d.key).unwrap_or_else(|e| panic!("{}: key: {e}", preset.name()));
            if let Some(scope) = &d.scope {
                KeyExtractor::compile(scope).unwrap_or_else(|e| panic!("{}: scope: {e}", preset.name()));
            }
            assert!(d.ttl.0 >= d.retry_window, "{}: ttl {} < {:?}", preset.name(), d.ttl, d.retry_window);
            assert!(d.ttl.0 >= Duration::from_secs(DAY), "{}", preset.name());
            let cfg = VerifyConfig {
                scheme: None,
                secret: SecretList(vec![SecretRef::Env("S".into())]),
                tolerance: None,
                header: None,
                algorithm: None,
                encoding: None,
                prefix: None,
                public_url: None,
            };
            let verifier = Verifier::compile_with(&cfg, Some(&d.scheme), &|_| Some(whsec.clone()))
                .unwrap_or_else(|e| panic!("{}: {e}", preset.name()));
            assert_eq!(verifier.scheme(), &d.scheme);
        }
    }

    #[test]
    fn keys_and_scopes_are_found_in_real_shaped_deliveries() {
        for (preset, body, headers, key, scope) in DELIVERIES {
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_static(v));
            }
            let body = Bytes::from_static(body);
            let view = RequestView::new(&map, None, &body);
            let d = preset.defaults();
            let found = KeyExtractor::compile(&d.key).unwrap().extract(&view, 255).unwrap();
            assert_eq!(found.as_deref(), Some(*key), "{}", preset.name());
            let found_scope = d.scope.map(|s| KeyExtractor::compile(&s).unwrap().extract(&view, 255).unwrap().unwrap());
            assert_eq!(found_scope.as_deref(), *scope, "{}", preset.name());
        }
    }
}
