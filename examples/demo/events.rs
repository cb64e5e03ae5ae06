//! The storm: webhook events shaped like Stripe's and GitHub's, and how each is delivered, all
//! drawn from one seed so that a run can be repeated.

use bytes::Bytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Keyed by the event id in the body (`/id`); its route answers a duplicate in flight with 409.
    Stripe,
    /// Keyed by `X-GitHub-Delivery`; its route holds a duplicate in flight until the first ends.
    Github,
}

impl Provider {
    pub fn path(self) -> &'static str {
        match self {
            Provider::Stripe => "/webhooks/stripe",
            Provider::Github => "/webhooks/github",
        }
    }
}

/// How the sender treats one event.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Copies sent at the same moment in the storm (a provider's parallel workers racing).
    pub copies: usize,
    /// The app takes longer than the sender waits, so the sender gives up and retries.
    pub slow: bool,
    /// Plain redeliveries after the storm (a retry schedule, or someone pressing "resend").
    pub redeliveries: usize,
}

pub struct Event {
    pub provider: Provider,
    /// The idempotency key idemgate finds in the delivery, which the app receives.
    pub key: String,
    /// Headers the provider sends besides its signature.
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub plan: Plan,
}

/// Secrets the demo's idemgate verifies signatures with, and the sender signs with.
pub struct Secrets {
    pub stripe: String,
    pub github: String,
}

/// `count` events. The first three always show the three behaviours the demo is about: a slow
/// first delivery, concurrent copies held by `concurrent: wait`, and concurrent copies refused
/// with 409 by `concurrent: reject`; the rest are drawn from the seed.
pub fn storm(seed: u64, count: usize) -> (Vec<Event>, Secrets) {
    let mut rng = Rng(seed);
    let secrets = Secrets { stripe: format!("whsec_{}", rng.alnum(32)), github: rng.hex(40) };
    let events = (0..count)
        .map(|i| {
            let (provider, plan) = match i {
                0 => (Provider::Stripe, Plan { copies: 1, slow: true, redeliveries: 1 }),
                1 => (Provider::Github, Plan { copies: 3, slow: false, redeliveries: 1 }),
                2 => (Provider::Stripe, Plan { copies: 3, slow: false, redeliveries: 1 }),
                _ => random_plan(&mut rng),
            };
            match provider {
                Provider::Stripe => stripe_event(&mut rng, plan),
                Provider::Github => github_event(&mut rng, plan),
            }
        })
        .collect();
    (events, secrets)
}

fn random_plan(rng: &mut Rng) -> (Provider, Plan) {
    let provider = if rng.below(2) == 0 { Provider::Stripe } else { Provider::Github };
    // Slow events only on the reject route: a sender that gives up after a timeout and retries
    // sees 409 there while the app still works, and the replay once it is done.
    let slow = provider == Provider::Stripe && rng.below(6) == 0;
    let copies = if slow { 1 } else { 1 + rng.below(4) };
    (provider, Plan { copies, slow, redeliveries: rng.below(3) })
}

const STRIPE_TYPES: [(&str, &str, &str); 4] = [
    ("invoice.paid", "in_", "invoice"),
    ("payment_intent.succeeded", "pi_", "payment_intent"),
    ("charge.refunded", "ch_", "charge"),
    ("customer.subscription.updated", "sub_", "subscription"),
];

fn stripe_event(rng: &mut Rng, plan: Plan) -> Event {
    let id = format!("evt_1Q{}", rng.alnum(22));
    let (kind, prefix, object) = STRIPE_TYPES[rng.below(STRIPE_TYPES.len())];
    let body = serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1_732_700_000 + rng.below(86_400),
        "type": kind,
        "livemode": false,
        "pending_webhooks": 1,
        "data": { "object": {
            "id": format!("{prefix}1Q{}", rng.alnum(22)),
            "object": object,
            "amount": 500 + 100 * rng.below(200),
            "currency": "usd",
            "customer": format!("cus_{}", rng.alnum(14)),
        } },
    });
    let headers = vec![("Content-Type", "application/json; charset=utf-8".into()), ("User-Agent", "Stripe/1.0".into())];
    Event { provider: Provider::Stripe, key: id, headers, body: Bytes::from(body.to_string()), plan }
}

fn github_event(rng: &mut Rng, plan: Plan) -> Event {
    let delivery = rng.uuid();
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "before": rng.hex(40),
        "after": rng.hex(40),
        "repository": { "id": 186_853_002, "full_name": "octo-org/octo-repo", "private": false },
        "pusher": { "name": "octocat", "email": "octocat@github.com" },
        "head_commit": { "id": rng.hex(40), "message": format!("Fix #{}", 1 + rng.below(900)) },
    });
    let headers = vec![
        ("Content-Type", "application/json".into()),
        ("User-Agent", "GitHub-Hookshot/044aadd".into()),
        ("X-GitHub-Event", "push".into()),
        ("X-GitHub-Delivery", delivery.clone()),
        ("X-GitHub-Hook-ID", "292430182".into()),
    ];
    Event { provider: Provider::Github, key: delivery, headers, body: Bytes::from(body.to_string()), plan }
}

/// splitmix64: enough randomness for ids and plans, and no dependency for it.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; the tiny bias of a modulo does not matter here).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| alphabet[self.below(alphabet.len())] as char).collect()
    }

    fn alnum(&mut self, len: usize) -> String {
        self.pick(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", len)
    }

    fn hex(&mut self, len: usize) -> String {
        self.pick(b"0123456789abcdef", len)
    }

    fn uuid(&mut self) -> String {
        format!("{}-{}-{}-{}-{}", self.hex(8), self.hex(4), self.hex(4), self.hex(4), self.hex(12))
    }
}
