//! Provider-shaped requests for an event: path, headers and body as each provider sends them
//! (shapes after tests/fixtures/webhooks/, smaller).

use super::model::{Event, Payload, Provider};
use super::rng::Rng;

/// One HTTP request, as the provider sends it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Event {
    pub fn request(&self, payload: Payload) -> Outgoing {
        let mut rng = Rng::new(self.detail);
        let json = ("content-type", "application/json".to_string());
        let (path, mut headers, body) = match self.provider {
            Provider::Github => {
                let headers = vec![
                    json,
                    ("x-github-event", "push".into()),
                    ("x-github-delivery", self.key.clone()),
                    ("x-github-hook-id", self.scope.clone().unwrap_or_default()),
                ];
                ("/webhooks/github".to_string(), headers, github(&mut rng, payload))
            }
            Provider::Stripe => ("/webhooks/stripe".into(), vec![json], stripe(&self.key, &mut rng, payload)),
            Provider::Shopify => {
                let headers =
                    vec![json, ("x-shopify-topic", "orders/create".into()), ("x-shopify-webhook-id", self.key.clone())];
                ("/webhooks/shopify".into(), headers, shopify(&mut rng, payload))
            }
            Provider::Twilio => {
                let form = ("content-type", "application/x-www-form-urlencoded".to_string());
                ("/webhooks/twilio/status".into(), vec![form], twilio(&self.key, &mut rng))
            }
            Provider::Api => {
                let mut headers = vec![json, ("authorization", self.scope.clone().unwrap_or_default())];
                let path = if self.key_in_query {
                    format!("/api/payments?idempotency_key={}", self.key)
                } else {
                    headers.push(("idempotency-key", self.key.clone()));
                    "/api/payments".into()
                };
                (path, headers, api(&mut rng, payload))
            }
        };
        headers.push(("user-agent", format!("stream-provider/{}", self.provider.route())));
        Outgoing { path, headers, body: body.into_bytes() }
    }
}

/// A JSON object of already-encoded members; `Reordered` writes them backwards, spread out.
fn object(members: &[(&str, String)], payload: Payload) -> String {
    let parts: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    if payload == Payload::Reordered {
        let parts: Vec<String> = parts.iter().rev().map(|p| p.replacen("\":", "\": ", 1)).collect();
        format!("{{\n  {}\n}}", parts.join(",\n  "))
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

fn github(rng: &mut Rng, payload: Payload) -> String {
    let repo = rng.range(1000, 99_999);
    let repository = format!("{{\"id\":{repo},\"full_name\":\"acme/service-{repo}\"}}");
    let commit = format!("[{{\"id\":\"{}\",\"message\":\"Fix #{}\"}}]", rng.hex(40), rng.range(1, 999));
    object(
        &[
            ("ref", quoted("refs/heads/main")),
            ("before", quoted(&rng.hex(40))),
            ("after", quoted(&rng.hex(40))),
            ("repository", repository),
            ("pusher", format!("{{\"name\":\"dev{}\"}}", rng.range(1, 99))),
            ("commits", commit),
        ],
        payload,
    )
}

fn stripe(key: &str, rng: &mut Rng, payload: Payload) -> String {
    let invoice = format!(
        "{{\"id\":\"in_1{}\",\"object\":\"invoice\",\"amount_paid\":{},\"currency\":\"usd\"}}",
        rng.hex(20),
        rng.range(100, 100_000)
    );
    object(
        &[
            ("id", quoted(key)),
            ("object", quoted("event")),
            ("api_version", quoted("2024-06-20")),
            ("created", format!("{}", 1_718_000_000 + rng.range(0, 10_000_000))),
            ("type", quoted("invoice.paid")),
            ("data", format!("{{\"object\":{invoice}}}")),
        ],
        payload,
    )
}

fn shopify(rng: &mut Rng, payload: Payload) -> String {
    let cents = rng.range(100, 99_999) + if payload == Payload::Changed { 1 } else { 0 };
    let minute = if payload == Payload::Touched { 59 } else { 1 };
    object(
        &[
            ("id", format!("{}", 820_982_911_946_154_508u64 + rng.range(0, 1_000_000))),
            ("email", quoted(&format!("buyer{}@example.com", rng.range(1, 9999)))),
            ("currency", quoted("USD")),
            ("total_price", quoted(&format!("{}.{:02}", cents / 100, cents % 100))),
            ("updated_at", quoted(&format!("2024-05-14T12:{minute:02}:02-04:00"))),
        ],
        payload,
    )
}

fn twilio(key: &str, rng: &mut Rng) -> String {
    let (sid, status) = key.split_once(':').expect("a Twilio key is MessageSid:MessageStatus");
    format!(
        "AccountSid=AC{}&ApiVersion=2010-04-01&From=%2B1501712{:04}&MessageSid={sid}&MessageStatus={status}&To=%2B1555867{:04}",
        rng.hex(32),
        rng.range(0, 9999),
        rng.range(0, 9999)
    )
}

fn api(rng: &mut Rng, payload: Payload) -> String {
    let amount = rng.range(100, 50_000) + if payload == Payload::Changed { 100 } else { 0 };
    object(
        &[
            ("amount", format!("{amount}")),
            ("currency", quoted("eur")),
            ("customer", quoted(&format!("cus_{}", rng.hex(14)))),
        ],
        payload,
    )
}
