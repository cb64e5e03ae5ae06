//! What a delivery stream is: events from several providers, each delivered by one or more
//! flows (a provider's attempts, retried until a 2xx), and the app's planned answers.

use std::fmt;

/// The providers of the stream; each is one route of [`super::ROUTES`], named alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Key in `X-GitHub-Delivery`, scoped by `X-GitHub-Hook-ID` (one delivery id, several hooks).
    Github,
    /// Key in the JSON body (`/id`); `concurrent: wait`; no fingerprint.
    Stripe,
    /// Key in `X-Shopify-Webhook-Id`; fingerprint of `/id` and `/total_price` only.
    Shopify,
    /// Composite key from a form body: `MessageSid` and `MessageStatus`.
    Twilio,
    /// `Idempotency-Key` header or `?idempotency_key=`, scoped by `Authorization`; fingerprint of the body.
    Api,
}

impl Provider {
    pub fn route(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Stripe => "stripe",
            Provider::Shopify => "shopify",
            Provider::Twilio => "twilio",
            Provider::Api => "api",
        }
    }

    /// Whether idemgate must see `payload` as another payload than the original (422).
    pub fn differs(self, payload: Payload) -> bool {
        !self.same_payload(Payload::Original, payload)
    }

    /// Whether the route's fingerprint makes these two payloads the same payload.
    pub fn same_payload(self, a: Payload, b: Payload) -> bool {
        match self {
            // `fingerprint: body`: the bytes.
            Provider::Api => a == b,
            // `fingerprint: { json: [/id, /total_price] }`: only a changed price counts.
            Provider::Shopify => (a == Payload::Changed) == (b == Payload::Changed),
            // No fingerprint.
            _ => true,
        }
    }

    /// The payload variants a redelivery of this provider can carry.
    pub fn variants(self) -> &'static [Payload] {
        match self {
            Provider::Stripe => &[Payload::Reordered],
            Provider::Shopify => &[Payload::Reordered, Payload::Touched, Payload::Changed],
            Provider::Api => &[Payload::Reordered, Payload::Changed],
            Provider::Github | Provider::Twilio => &[],
        }
    }
}

/// The body a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Original,
    /// The same members in another order, with other whitespace.
    Reordered,
    /// A member outside the route's fingerprint changed (Shopify's `updated_at`).
    Touched,
    /// A member inside the fingerprint changed (an amount or a price).
    Changed,
}

/// What the app answers to one forward of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppAnswer {
    pub status: u16,
    pub delay_ms: u64,
}

/// One provider-side sequence of attempts: sent at `start`, retried after anything but a 2xx or
/// a 4xx other than 409, at most `tries` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub kind: FlowKind,
    pub start: Start,
    pub payload: Payload,
    pub tries: u32,
    /// The provider's client gives up waiting after this long (and retries).
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    First,
    /// Sent at the same moment as the first.
    Concurrent,
    /// Sent a little after the first, whatever became of it.
    Duplicate,
    /// A redelivery within the ttl: replayed.
    Redelivery,
    /// A redelivery after the ttl: forwarded again.
    Late,
    /// A redelivery with another payload.
    Variant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Milliseconds after the stream starts.
    At(u64),
    /// Milliseconds after the event's first 2xx reached the provider.
    AfterSettle(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its position in the full stream (kept when the stream is shrunk).
    pub index: usize,
    pub provider: Provider,
    /// The key idemgate extracts, and forwards in `X-Idempotency-Key`.
    pub key: String,
    /// The scope header's value on scoped routes.
    pub scope: Option<String>,
    /// Api only: the key travels in the query instead of the header.
    pub key_in_query: bool,
    /// Drawn once; the body's numbers and names come from it.
    pub detail: u64,
    /// The app's answers to the event's first forwards; later ones get a quick 200.
    pub app: Vec<AppAnswer>,
    pub flows: Vec<Flow>,
}

/// How a stream was drawn, and the clock it runs on.
#[derive(Debug, Clone)]
pub struct Profile {
    pub events: usize,
    /// First deliveries start within this many milliseconds.
    pub spread_ms: u64,
    /// One simulated day in real milliseconds; the routes' ttl is 7 of them.
    pub day_ms: f64,
    /// Redeliveries after the ttl (they must be forwarded again).
    pub late: bool,
    /// Within-ttl redeliveries come at most this many days after the event settled.
    pub redeliver_days: f64,
    pub tries: u32,
    pub max_backoff_ms: u64,
    pub timeout_ms: u64,
    /// The client timeout of a flow whose app is slow on purpose.
    pub impatient_ms: u64,
}

impl Profile {
    /// The real milliseconds of `days` simulated days.
    pub fn days(&self, days: f64) -> u64 {
        (days * self.day_ms).round() as u64
    }

    pub fn ttl_ms(&self) -> u64 {
        self.days(7.0)
    }

    /// How long a flow waits before its try number `n` (from 1).
    pub fn backoff_ms(&self, n: u32) -> u64 {
        ((40.0 * 1.6f64.powi(n as i32 - 1)) as u64).min(self.max_backoff_ms)
    }
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub seed: u64,
    pub profile: Profile,
    pub events: Vec<Event>,
}

impl Stream {
    /// The same stream with only these events (by [`Event::index`]).
    pub fn only(&self, indices: &[usize]) -> Stream {
        let events = self.events.iter().filter(|e| indices.contains(&e.index)).cloned().collect();
        Stream { seed: self.seed, profile: self.profile.clone(), events }
    }

    pub fn event(&self, index: usize) -> Option<&Event> {
        self.events.iter().find(|e| e.index == index)
    }

    /// Every event once more at `at_ms`: its first flow alone (the original payload), retried
    /// until a 2xx. The final round of a chaos run.
    pub fn redeliver_all(&self, at_ms: u64) -> Stream {
        let mut last = self.clone();
        for event in &mut last.events {
            event.flows.truncate(1);
            event.flows[0] = Flow {
                start: Start::At(at_ms),
                tries: 30,
                timeout_ms: self.profile.timeout_ms,
                ..event.flows[0].clone()
            };
        }
        last
    }

    pub fn deliveries_planned(&self) -> usize {
        self.events.iter().map(|e| e.flows.len()).sum()
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.profile;
        writeln!(
            f,
            "stream seed={}: {} events, {} flows; 1 day = {:.0} ms, ttl 7 days = {} ms",
            self.seed,
            self.events.len(),
            self.deliveries_planned(),
            p.day_ms,
            p.ttl_ms()
        )?;
        for event in &self.events {
            write!(f, "{event}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = self.scope.as_deref().map(|s| format!(" scope={s}")).unwrap_or_default();
        let query = if self.key_in_query { " (key in query)" } else { "" };
        let app: Vec<String> = self
            .app
            .iter()
            .map(|a| format!("{} after {} ms", a.status, a.delay_ms))
            .chain(["then 200".into()])
            .collect();
        writeln!(
            f,
            "e{:<3} {:<7} key={}{scope}{query}; app: {}",
            self.index,
            self.provider.route(),
            self.key,
            app.join(", ")
        )?;
        for (i, flow) in self.flows.iter().enumerate() {
            let start = match flow.start {
                Start::At(ms) => format!("at {ms} ms"),
                Start::AfterSettle(ms) => format!("settled+{ms} ms"),
            };
            writeln!(
                f,
                "      f{i} {:<10} {start:<16} {:<9} client timeout {} ms, up to {} tries",
                format!("{:?}", flow.kind).to_lowercase(),
                format!("{:?}", flow.payload).to_lowercase(),
                flow.timeout_ms,
                flow.tries
            )?;
        }
        Ok(())
    }
}
