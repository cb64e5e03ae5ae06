//! A run's record, per event: its attempts and the forwards they caused, with the questions the
//! checks ask of them.

use super::model::{Event, Payload, Stream};
use super::record::{Attempt, AttemptId, Forward, Reply};
use std::fmt;

/// Something the contract does not allow, seen in a run.
#[derive(Debug, Clone)]
pub struct Violation {
    pub event: Option<usize>,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.event {
            Some(e) => write!(f, "e{e}: {}", self.what),
            None => write!(f, "{}", self.what),
        }
    }
}

pub struct EventHistory<'a> {
    pub event: &'a Event,
    /// In the order they were sent.
    pub attempts: Vec<&'a Attempt>,
    /// In the order they reached the app.
    pub forwards: Vec<&'a Forward>,
}

impl<'a> EventHistory<'a> {
    pub fn violation(&self, what: impl Into<String>) -> Violation {
        Violation { event: Some(self.event.index), what: what.into() }
    }

    pub fn attempt(&self, id: AttemptId) -> Option<&'a Attempt> {
        self.attempts.iter().copied().find(|a| a.id == id)
    }

    pub fn forward(&self, number: u64) -> Option<&'a Forward> {
        self.forwards.iter().copied().find(|f| f.number == number)
    }

    /// The forwards that this attempt caused (one at most).
    pub fn forwards_of(&self, id: AttemptId) -> Vec<&'a Forward> {
        self.forwards.iter().copied().filter(|f| f.attempt == Some(id)).collect()
    }

    /// The app's reply to a forward.
    pub fn app_reply(forward: &Forward) -> Option<&Reply> {
        forward.answer.as_ref().map(|(_, r)| r)
    }

    /// When a provider first held this forward's response, as its own answer or as a replay.
    /// Its record was committed by then (a response leaves only after its commit).
    pub fn seen_ms(&self, forward: &Forward) -> Option<f64> {
        self.attempts
            .iter()
            .filter_map(|a| a.reply().map(|r| (a, r)))
            .filter(|(a, r)| r.forward() == Some(forward.number) && (r.replayed() || forward.attempt == Some(a.id)))
            .map(|(a, _)| a.done_ms)
            .min_by(f64::total_cmp)
    }

    /// When the attempt that caused this forward was sent.
    pub fn sent_ms(&self, forward: &Forward) -> Option<f64> {
        forward.attempt.and_then(|id| self.attempt(id)).map(|a| a.sent_ms)
    }

    pub fn payload(&self, id: AttemptId) -> Payload {
        self.event.flows[id.flow].payload
    }

    /// Whether the route's fingerprint tells the payloads of these two attempts apart.
    pub fn differ(&self, a: &Attempt, b: &Attempt) -> bool {
        !self.event.provider.same_payload(self.payload(a.id), self.payload(b.id))
    }

    pub fn settled(&self) -> bool {
        self.attempts.iter().any(|a| a.reply().is_some_and(|r| (200..300).contains(&r.status)))
    }
}

/// Splits a run by event. Forwards that name no attempt of the stream are violations.
pub fn by_event<'a>(
    stream: &'a Stream,
    attempts: &'a [Attempt],
    forwards: &'a [Forward],
) -> (Vec<EventHistory<'a>>, Vec<Violation>) {
    let mut strays = Vec::new();
    for f in forwards {
        if f.attempt.is_none_or(|a| stream.event(a.event).is_none()) {
            strays
                .push(Violation { event: None, what: format!("forward #{} names no attempt of the stream", f.number) });
        }
    }
    let histories = stream
        .events
        .iter()
        .map(|event| {
            let mut forwards: Vec<&Forward> =
                forwards.iter().filter(|f| f.attempt.is_some_and(|a| a.event == event.index)).collect();
            forwards.sort_by(|a, b| a.arrived_ms.total_cmp(&b.arrived_ms));
            let attempts = attempts.iter().filter(|a| a.id.event == event.index).collect();
            EventHistory { event, attempts, forwards }
        })
        .collect();
    (histories, strays)
}

/// The checks every run must pass, whatever happened to the proxy: each forward carries its
/// event's key and the exact request of its attempt; every replay is a stored response of the
/// same event, equal in status, headers and body; every other app answer is the attempt's own
/// forward's; 422 only for a changed payload; every event settled with a 2xx.
pub fn check_common(h: &EventHistory, out: &mut Vec<Violation>) {
    for f in &h.forwards {
        let id = f.attempt.unwrap();
        let Some(flow) = h.event.flows.get(id.flow) else {
            out.push(h.violation(format!("forward #{} names flow {} that does not exist", f.number, id.flow)));
            continue;
        };
        if f.key != h.event.key {
            out.push(h.violation(format!(
                "forward #{} carried X-Idempotency-Key {:?}, not {:?}",
                f.number, f.key, h.event.key
            )));
        }
        let sent = h.event.request(flow.payload);
        if f.path != sent.path || f.body[..] != sent.body[..] {
            out.push(h.violation(format!("forward #{} ({id}) is not the request its attempt sent", f.number)));
        }
        if h.forwards_of(id).len() > 1 {
            out.push(h.violation(format!("attempt {id} reached the app {} times", h.forwards_of(id).len())));
        }
    }
    for a in &h.attempts {
        if let Some(reply) = a.reply() {
            check_answer(h, a, reply, out);
        }
    }
    if !h.settled() {
        out.push(h.violation("no attempt was ever answered with a 2xx"));
    }
    if h.forwards.is_empty() {
        out.push(h.violation("the event never reached the app"));
    }
}

fn check_answer(h: &EventHistory, a: &Attempt, reply: &Reply, out: &mut Vec<Violation>) {
    let own = h.forwards_of(a.id);
    if reply.replayed() {
        let Some(stored) = reply.forward().and_then(|n| h.forward(n)) else {
            return out
                .push(h.violation(format!("{} got a replay of no forward of this event: {:?}", a.id, reply.body)));
        };
        match EventHistory::app_reply(stored) {
            Some(app) if (200..300).contains(&app.status) => {
                if let Some(diff) = differences(reply, app) {
                    out.push(
                        h.violation(format!("{}: the replay of forward #{} differs: {diff}", a.id, stored.number)),
                    );
                }
            }
            _ => out.push(h.violation(format!(
                "{} got a replay of forward #{}, whose answer was not stored",
                a.id, stored.number
            ))),
        }
        if !own.is_empty() {
            out.push(h.violation(format!("{} was forwarded, yet its client got a replay", a.id)));
        }
        return;
    }
    match reply.problem().as_deref() {
        // The key must be held by a request of the event whose payload is another one.
        Some("payload-mismatch") if !h.attempts.iter().any(|b| b.sent_ms <= a.done_ms && h.differ(a, b)) => {
            out.push(h.violation(format!("{} got 422, yet no attempt of another payload came before it", a.id)));
        }
        // Only a failure after the forward may follow one: the app's, or the store's at commit.
        Some("store-unavailable" | "upstream-unreachable" | "upstream-timeout") => {}
        Some(_) if !own.is_empty() => {
            out.push(h.violation(format!("{} reached the app, yet its client got {}", a.id, reply.summary())));
        }
        Some(_) => {}
        None => match own.first().and_then(|f| EventHistory::app_reply(f)) {
            Some(app) => {
                if let Some(diff) = differences(reply, app) {
                    out.push(h.violation(format!("{}: the answer differs from the app's: {diff}", a.id)));
                }
            }
            None => out.push(h.violation(format!(
                "{} got {} although no forward of it was answered",
                a.id,
                reply.summary()
            ))),
        },
    }
}

/// Status, stored headers and body of a response idemgate passed on or replayed, against the app's.
pub fn differences(got: &Reply, app: &Reply) -> Option<String> {
    if got.status != app.status {
        return Some(format!("status {} instead of {}", got.status, app.status));
    }
    if got.body != app.body {
        return Some(format!("body {:?} instead of {:?}", got.body, app.body));
    }
    let (got_h, app_h) = (got.stored_headers(), app.stored_headers());
    if got_h != app_h {
        let show = |h: &[(String, Vec<u8>)]| {
            h.iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v))).collect::<Vec<_>>().join("; ")
        };
        return Some(format!("headers [{}] instead of [{}]", show(&got_h), show(&app_h)));
    }
    if got.headers.contains_key("x-app-hop") {
        return Some("the hop-by-hop header x-app-hop was passed on".into());
    }
    None
}
