//! Draws a stream from a seed: realistic provider traffic, with the duplicates, retries,
//! redeliveries and payload variants that providers really send.

use super::model::{AppAnswer, Event, Flow, FlowKind, Payload, Profile, Provider, Start, Stream};
use super::rng::Rng;

impl Stream {
    pub fn generate(seed: u64, profile: &Profile) -> Stream {
        let mut rng = Rng::new(seed);
        let mut events: Vec<Event> = Vec::with_capacity(profile.events);
        while events.len() < profile.events {
            let mut draw = rng.fork();
            let index = events.len();
            let event = match events.last() {
                // A sibling: the same key under another scope, or Twilio's next status of one message.
                Some(prev)
                    if draw.chance(0.12) && prev.provider != Provider::Stripe && prev.provider != Provider::Shopify =>
                {
                    sibling(prev, index, &mut draw, profile)
                }
                _ => event(index, &mut draw, profile),
            };
            // Each event is one record: a sibling of a sibling may come back to an identity in use.
            if !events.iter().any(|e| (e.provider, &e.key, &e.scope) == (event.provider, &event.key, &event.scope)) {
                events.push(event);
            }
        }
        Stream { seed, profile: profile.clone(), events }
    }
}

fn event(index: usize, rng: &mut Rng, profile: &Profile) -> Event {
    let provider = *rng.pick(&[
        Provider::Github,
        Provider::Github,
        Provider::Stripe,
        Provider::Stripe,
        Provider::Shopify,
        Provider::Twilio,
        Provider::Api,
        Provider::Api,
    ]);
    let (key, scope) = match provider {
        Provider::Github => (uuid(rng), Some(format!("{}", rng.range(100_000, 999_999)))),
        Provider::Stripe => (format!("evt_1{}", rng.hex(23)), None),
        Provider::Shopify => (uuid(rng), None),
        Provider::Twilio => {
            let status = *rng.pick(&["queued", "sent", "delivered", "undelivered"]);
            (format!("SM{}:{status}", rng.hex(32)), None)
        }
        Provider::Api => (format!("ik-{}", rng.hex(16)), Some(format!("Bearer sk_test_{}", rng.hex(12)))),
    };
    let key_in_query = provider == Provider::Api && rng.chance(0.3);
    let mut event =
        Event { index, provider, key, scope, key_in_query, detail: rng.next_u64(), app: vec![], flows: vec![] };
    plan(&mut event, rng, profile);
    event
}

/// Another event that shares part of `prev`'s identity: GitHub's delivery id sent to a second
/// hook, an API key reused by another tenant, Twilio's next status of the same message. Both
/// events must reach the app.
fn sibling(prev: &Event, index: usize, rng: &mut Rng, profile: &Profile) -> Event {
    let (key, scope) = match prev.provider {
        Provider::Github => (prev.key.clone(), Some(format!("{}", rng.range(100_000, 999_999)))),
        Provider::Api => (prev.key.clone(), Some(format!("Bearer sk_test_{}", rng.hex(12)))),
        _ => {
            let (sid, status) = prev.key.split_once(':').unwrap();
            let next = if status == "delivered" { "read" } else { "delivered" };
            (format!("{sid}:{next}"), None)
        }
    };
    let detail = rng.next_u64();
    let mut event = Event { index, key, scope, detail, app: vec![], flows: vec![], ..prev.clone() };
    plan(&mut event, rng, profile);
    event
}

/// The app's answers and the provider's flows for one event.
fn plan(event: &mut Event, rng: &mut Rng, p: &Profile) {
    let start = rng.range(0, p.spread_ms);
    let mut first = Flow {
        kind: FlowKind::First,
        start: Start::At(start),
        payload: Payload::Original,
        tries: p.tries,
        timeout_ms: p.timeout_ms,
    };
    let fail = |rng: &mut Rng| *rng.pick(&[503, 500, 502, 429, 408]);
    event.app = match rng.range(0, 100) {
        0..55 => vec![],
        55..70 => vec![AppAnswer { status: fail(rng), delay_ms: rng.range(0, 10) }],
        70..75 => vec![AppAnswer { status: fail(rng), delay_ms: 0 }, AppAnswer { status: fail(rng), delay_ms: 5 }],
        75..88 => {
            // The provider's client gives up before the slow app answers, and retries.
            first.timeout_ms = p.impatient_ms;
            vec![AppAnswer { status: 200, delay_ms: rng.range(3, 6) * p.impatient_ms }]
        }
        88..93 => {
            first.timeout_ms = p.impatient_ms;
            vec![AppAnswer { status: 503, delay_ms: rng.range(2, 3) * p.impatient_ms }]
        }
        _ => vec![AppAnswer { status: 200, delay_ms: rng.range(150, 300) }],
    };
    let copy = |kind, start| Flow { kind, start, ..first.clone() };
    let mut flows = vec![first.clone()];
    if rng.chance(0.25) {
        flows.extend((0..rng.range(1, 4)).map(|_| copy(FlowKind::Concurrent, Start::At(start))));
    }
    if rng.chance(0.3) {
        flows.extend((0..rng.range(1, 3)).map(|_| copy(FlowKind::Duplicate, Start::At(start + rng.range(5, 400)))));
    }
    if rng.chance(0.5) {
        for _ in 0..rng.range(1, 4) {
            let after = p.days(rng.range(1, (p.redeliver_days * 100.0) as u64) as f64 / 100.0);
            flows.push(copy(FlowKind::Redelivery, Start::AfterSettle(after)));
        }
    }
    if p.late && rng.chance(0.2) {
        let after = p.days(rng.range(850, 950) as f64 / 100.0);
        flows.push(copy(FlowKind::Late, Start::AfterSettle(after)));
    }
    let variants = event.provider.variants();
    if !variants.is_empty() && rng.chance(0.35) {
        for _ in 0..rng.range(1, 3) {
            let after = p.days(rng.range(5, (p.redeliver_days * 100.0) as u64) as f64 / 100.0);
            let payload = *rng.pick(variants);
            flows.push(Flow { payload, tries: 2, ..copy(FlowKind::Variant, Start::AfterSettle(after)) });
        }
    }
    event.flows = flows;
}

fn uuid(rng: &mut Rng) -> String {
    format!("{}-{}-{}-{}-{}", rng.hex(8), rng.hex(4), rng.hex(4), rng.hex(4), rng.hex(12))
}
