//! The end-state checks of a stream run against an idemgate that stays up, with the timing rules
//! of the ttl. Every rule is sound on the recorded times: it fires only when the record proves a
//! breach of the contract, never on a mere race.

use super::history::{EventHistory, Violation, by_event, check_common};
use super::model::{FlowKind, Stream};
use super::record::{Attempt, Forward, Outcome};

/// What a run did, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub attempts: usize,
    pub forwards: usize,
    pub replays: usize,
    pub conflicts: usize,
    pub mismatches: usize,
    /// App answers outside `store_status`: the key was released.
    pub released: usize,
    pub timeouts: usize,
    /// Attempts that had to be replays (completed, within the ttl) and were checked as such.
    pub within_ttl: usize,
    /// Redeliveries that came surely after the ttl and had to be forwarded again.
    pub after_ttl: usize,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} attempts, {} forwards ({} released by the app), {} replays, {} attempts that had to be a replay \
             (or 422) within the ttl, {} forwarded again after the ttl, {} conflicts (409), {} mismatches (422), \
             {} client timeouts",
            self.attempts,
            self.forwards,
            self.released,
            self.replays,
            self.within_ttl,
            self.after_ttl,
            self.conflicts,
            self.mismatches,
            self.timeouts
        )
    }
}

pub fn check_stream(stream: &Stream, attempts: &[Attempt], forwards: &[Forward]) -> (Vec<Violation>, Stats) {
    let ttl = stream.profile.ttl_ms() as f64;
    let (histories, mut violations) = by_event(stream, attempts, forwards);
    let mut stats = Stats { attempts: attempts.len(), forwards: forwards.len(), ..Stats::default() };
    for h in &histories {
        check_common(h, &mut violations);
        check_sequence(h, ttl, &mut violations);
        for a in &h.attempts {
            count(a, &mut stats);
            check_ttl(h, a, ttl, &mut stats, &mut violations);
            check_conflict(h, a, &mut violations);
            check_transport(h, a, stream, &mut violations);
        }
    }
    stats.released = forwards.iter().filter(|f| f.status().is_some_and(|s| !(200..300).contains(&s))).count();
    (violations, stats)
}

fn count(a: &Attempt, stats: &mut Stats) {
    match &a.outcome {
        Outcome::Answered(r) if r.replayed() => stats.replays += 1,
        Outcome::Answered(r) if r.status == 409 => stats.conflicts += 1,
        Outcome::Answered(r) if r.status == 422 => stats.mismatches += 1,
        Outcome::TimedOut => stats.timeouts += 1,
        _ => {}
    }
}

/// One forward at a time, and a second one only after a release or after the ttl of a completion.
fn check_sequence(h: &EventHistory, ttl: f64, out: &mut Vec<Violation>) {
    for pair in h.forwards.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let Some(answered) = before.answered_ms() else {
            out.push(h.violation(format!("forward #{} was never answered by the app", before.number)));
            continue;
        };
        if after.arrived_ms < answered {
            out.push(h.violation(format!(
                "forward #{} reached the app at {:.0} ms while forward #{} was still there (until {answered:.0} ms)",
                after.number, after.arrived_ms, before.number
            )));
        }
        let completed = before.status().is_some_and(|s| (200..300).contains(&s));
        if completed && after.arrived_ms - answered < ttl {
            out.push(h.violation(format!(
                "forwarded again: #{} {:.0} ms after forward #{} completed the key (ttl {ttl:.0} ms)",
                after.number,
                after.arrived_ms - answered,
                before.number
            )));
        }
    }
}

/// Within the ttl of a completion that a provider has seen, an attempt is a replay of it (422 for
/// another payload); after its ttl, never a replay of it, and a late redelivery is forwarded.
fn check_ttl(h: &EventHistory, a: &Attempt, ttl: f64, stats: &mut Stats, out: &mut Vec<Violation>) {
    let flow = &h.event.flows[a.id.flow];
    let reply = a.reply();
    if let Some(r) = reply.filter(|r| r.replayed()) {
        let seen = r.forward().and_then(|n| h.forward(n)).and_then(|f| h.seen_ms(f));
        if let Some(seen) = seen.filter(|seen| a.sent_ms > seen + ttl) {
            out.push(h.violation(format!(
                "{} was replayed {:.0} ms after the ttl ended",
                a.id,
                a.sent_ms - seen - ttl
            )));
        }
    }
    // The latest completion that a provider had seen before this attempt was sent.
    let latest = h
        .forwards
        .iter()
        .filter(|f| f.status().is_some_and(|s| (200..300).contains(&s)))
        .filter_map(|f| h.seen_ms(f).filter(|seen| *seen <= a.sent_ms).map(|seen| (*f, seen)))
        .next_back();
    let Some((done, seen)) = latest else { return };
    let answered = done.answered_ms().unwrap();
    if a.done_ms < answered + ttl {
        let Some(r) = reply else { return };
        stats.within_ttl += 1;
        let stored = h.payload(done.attempt.unwrap());
        let ok = if !h.event.provider.same_payload(stored, flow.payload) {
            r.problem().as_deref() == Some("payload-mismatch")
        } else {
            r.replayed() && r.forward() == Some(done.number)
        };
        if !ok {
            out.push(h.violation(format!(
                "{} came {:.0} ms after forward #{} completed (ttl {ttl:.0} ms) and got {}",
                a.id,
                a.sent_ms - answered,
                done.number,
                r.summary()
            )));
        }
    } else if a.sent_ms > seen + ttl && flow.kind == FlowKind::Late && a.id.try_ == 0 {
        stats.after_ttl += 1;
        if h.forwards_of(a.id).is_empty() {
            out.push(h.violation(format!(
                "{} came {:.0} ms after the ttl of forward #{} ended, yet was not forwarded: {}",
                a.id,
                a.sent_ms - seen - ttl,
                done.number,
                a.summary()
            )));
        }
    }
}

/// A 409 needs another forward of the event in flight at some moment between send and answer.
fn check_conflict(h: &EventHistory, a: &Attempt, out: &mut Vec<Violation>) {
    if a.reply().and_then(|r| r.problem()).as_deref() != Some("key-in-flight") {
        return;
    }
    let in_flight = h.forwards.iter().filter(|f| f.attempt != Some(a.id)).any(|f| {
        let claimed_by = h.attempt(f.attempt.unwrap()).map_or(f.arrived_ms, |owner| owner.sent_ms);
        claimed_by <= a.done_ms && ended_by(h, f).is_none_or(|end| end >= a.sent_ms)
    });
    if !in_flight {
        out.push(h.violation(format!("{} got 409 while no forward of the event was in flight", a.id)));
    }
}

/// A moment by which this forward's claim was surely over (completed or released), if known.
fn ended_by(h: &EventHistory, f: &Forward) -> Option<f64> {
    let own = f.attempt.and_then(|id| h.attempt(id)).filter(|a| a.reply().is_some()).map(|a| a.done_ms);
    let next = h.forwards.iter().find(|g| g.arrived_ms > f.arrived_ms).map(|g| g.arrived_ms);
    [own, h.seen_ms(f), next].into_iter().flatten().min_by(f64::total_cmp)
}

/// With idemgate up and the app answering, every attempt is answered, except by an impatient
/// client (one that gives up before the slow app answers).
fn check_transport(h: &EventHistory, a: &Attempt, stream: &Stream, out: &mut Vec<Violation>) {
    let impatient = h.event.flows[a.id.flow].timeout_ms < stream.profile.timeout_ms;
    match &a.outcome {
        Outcome::TimedOut if !impatient => out.push(h.violation(format!("{} got no answer in time", a.id))),
        Outcome::Failed(e) => out.push(h.violation(format!("{} failed: {e}", a.id))),
        // The store and the app are up: no failure of idemgate's own.
        Outcome::Answered(r) if r.status >= 500 && r.problem().is_some() => {
            out.push(h.violation(format!("{} got {}", a.id, r.summary())));
        }
        Outcome::Answered(r) if !matches!(r.status, 200..=299 | 409 | 422 | 408 | 429 | 500 | 502 | 503) => {
            out.push(h.violation(format!("{} got an unexpected {}", a.id, r.summary())));
        }
        _ => {}
    }
}
