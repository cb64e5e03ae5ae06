//! The invariants of an async chaos run (every route `delivery: { mode: async }`), judged on the
//! whole record at the end: the providers' attempts, every delivery the app received (with its
//! `Idempotency-Attempt`), the `events` rows left in the database, the journal of faults and the
//! child's output. Each holds whatever the timing of the faults was; docs/testing.md states them.

use super::child::Log;
use super::inbox::{ATTEMPTS, COMPLETED, DEAD, Drain, Row};
use super::invariants::FINAL_TRY;
use super::world::Journal;
use crate::stream::history::{EventHistory, Violation, by_event};
use crate::stream::model::Stream;
use crate::stream::record::{Attempt, Forward, Outcome};
use std::collections::HashMap;
use std::time::Duration;

/// The acknowledgement's status (`ack_status`).
const ACK_STATUS: u16 = 202;
/// An app answer this much under `upstream.timeout` surely reached idemgate in time; one closer
/// to it may have been cut by the timeout, and is not judged.
const IN_TIME_MARGIN: Duration = Duration::from_millis(300);
/// The app's kill and a connection's end are seen on two tasks: this apart is "at once".
const KILL_SLACK_MS: f64 = 100.0;

pub struct Inputs<'a> {
    pub stream: &'a Stream,
    pub attempts: &'a [Attempt],
    pub forwards: &'a [Forward],
    pub rows: &'a [Row],
    pub drain: &'a Drain,
    pub journal: &'a Journal,
    pub log: &'a Log,
    pub exit: Option<std::process::ExitStatus>,
    pub upstream_timeout: Duration,
}

#[derive(Debug, Default)]
pub struct InboxStats {
    pub attempts: usize,
    /// 2xx answers: the first-seen acknowledgement, and a duplicate's.
    pub fresh_acks: usize,
    pub replayed_acks: usize,
    /// Answers other than an acknowledgement (503 while starting, ...).
    pub refused: usize,
    /// No answer: refused or reset connections (idemgate down or killed), client timeouts.
    pub no_answer: usize,
    pub deliveries: usize,
    /// Deliveries after the first of their event.
    pub redeliveries: usize,
    /// Of those, the ones after a 2xx that a SIGKILL kept from the store.
    pub after_lost_2xx: usize,
    pub completed: usize,
    pub dead: usize,
    /// The most attempts one event took.
    pub max_attempts: u32,
}

pub fn check(run: &Inputs) -> (Vec<Violation>, InboxStats) {
    let (histories, mut violations) = by_event(run.stream, run.attempts, run.forwards);
    let mut stats = InboxStats { attempts: run.attempts.len(), deliveries: run.forwards.len(), ..Default::default() };
    let mut rows: HashMap<usize, Vec<&Row>> = HashMap::new();
    for row in run.rows {
        match row.origin.filter(|o| run.stream.event(o.event).is_some()) {
            Some(origin) => rows.entry(origin.event).or_default().push(row),
            None => violations
                .push(global(format!("the event {:?} on {} names no attempt of the stream", row.key, row.route))),
        }
    }
    for a in run.attempts {
        count(a, &mut stats);
    }
    for h in &histories {
        let rows = rows.remove(&h.event.index).unwrap_or_default();
        check_event(h, &rows, run, &mut stats, &mut violations);
    }
    check_process(run, &mut violations);
    (violations, stats)
}

fn global(what: String) -> Violation {
    Violation { event: None, what }
}

fn count(a: &Attempt, stats: &mut InboxStats) {
    match a.reply() {
        Some(r) if (200..300).contains(&r.status) && r.replayed() => stats.replayed_acks += 1,
        Some(r) if (200..300).contains(&r.status) => stats.fresh_acks += 1,
        Some(_) => stats.refused += 1,
        None => stats.no_answer += 1,
    }
}

fn is_2xx(status: u16) -> bool {
    (200..300).contains(&status)
}

fn check_event(h: &EventHistory, rows: &[&Row], run: &Inputs, stats: &mut InboxStats, out: &mut Vec<Violation>) {
    let acks: Vec<&Attempt> =
        h.attempts.iter().copied().filter(|a| a.reply().is_some_and(|r| is_2xx(r.status))).collect();
    check_acks(h, &acks, out);
    let Some(first_ack) = acks.iter().min_by(|a, b| a.done_ms.total_cmp(&b.done_ms)) else {
        // Never acknowledged: the app must not have it (the final delivery's answer is judged above).
        if !h.forwards.is_empty() {
            out.push(h.violation(format!("reached the app {} time(s), yet was never acknowledged", h.forwards.len())));
        }
        return;
    };
    let [row] = rows[..] else {
        return out.push(h.violation(format!("acknowledged, and {} rows in the store, not one", rows.len())));
    };
    let Some(origin) = check_row(h, row, first_ack, run, out) else { return };
    if row.state == DEAD {
        // Excluded from the delivery checks, as the promise excludes dead letters; but this run's
        // attempts and max_age cannot be spent, so a dead letter is a violation of its own.
        stats.dead += 1;
        if row.attempts < ATTEMPTS {
            out.push(h.violation(format!(
                "a dead letter after {} attempts, with neither attempts nor max_age spent",
                row.attempts
            )));
        }
        return;
    }
    check_deliveries(h, row, origin, run, stats, out);
}

/// Every 2xx is the acknowledgement; the event is acknowledged as first seen once at most (one
/// enqueue per key, kills included); the final round's last delivery was acknowledged.
fn check_acks(h: &EventHistory, acks: &[&Attempt], out: &mut Vec<Violation>) {
    let expected = serde_json::json!({ "key": h.event.key });
    for a in acks {
        let r = a.reply().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if r.status != ACK_STATUS || body != expected {
            out.push(h.violation(format!("{} got {} {:?}, not the acknowledgement", a.id, r.status, r.body)));
        }
    }
    let fresh: Vec<String> = acks.iter().filter(|a| !a.reply().unwrap().replayed()).map(|a| a.id.to_string()).collect();
    if fresh.len() > 1 {
        out.push(h.violation(format!(
            "acknowledged as first seen {} times ({}): queued more than once",
            fresh.len(),
            fresh.join(", ")
        )));
    }
    match h.attempts.iter().rev().find(|a| a.id.try_ >= FINAL_TRY) {
        Some(last) if last.reply().is_some_and(|r| is_2xx(r.status)) => {}
        Some(last) => out.push(h.violation(format!("the final delivery {} got {}", last.id, last.summary()))),
        None => out.push(h.violation("no final delivery was made")),
    }
}

/// The queued request is the one an acknowledged attempt carried: sent before the event's first
/// acknowledgement reached its sender (so the acknowledged copy is the one kept, not a later
/// redelivery queued after it was lost), and answered with the first-seen acknowledgement or not
/// answered at all (a SIGKILL between the synced enqueue and the response, or a client that gave
/// up): never queued while its sender was told no. Returns that attempt.
fn check_row<'a>(
    h: &EventHistory<'a>,
    row: &Row,
    first_ack: &Attempt,
    run: &Inputs,
    out: &mut Vec<Violation>,
) -> Option<&'a Attempt> {
    if row.route != h.event.provider.route() || row.key != h.event.key {
        out.push(h.violation(format!("its row is {:?} on {}", row.key, row.route)));
    }
    let Some(origin) = row.origin.and_then(|id| h.attempt(id)) else {
        out.push(h.violation(format!("its row was queued from {:?}, an attempt never sent", row.origin)));
        return None;
    };
    if origin.sent_ms > first_ack.done_ms {
        out.push(h.violation(format!(
            "acknowledged at {:.0} ms ({}), but the queued request is {}'s, sent later at {:.0} ms: the acknowledged one was lost",
            first_ack.done_ms, first_ack.id, origin.id, origin.sent_ms
        )));
    }
    match &origin.outcome {
        Outcome::Answered(r) if is_2xx(r.status) && !r.replayed() => {}
        Outcome::Answered(r) => {
            out.push(h.violation(format!(
                "its request was queued from {}, which was answered {}",
                origin.id,
                r.summary()
            )));
        }
        Outcome::TimedOut => {}
        Outcome::Failed(e) => {
            let killed =
                run.journal.kills_at.iter().any(|k| *k >= origin.sent_ms && *k <= origin.done_ms + KILL_SLACK_MS);
            if !killed {
                out.push(
                    h.violation(format!("its request was queued from {}, which failed with no kill: {e}", origin.id)),
                );
            }
        }
    }
    let sent = h.event.request(h.payload(origin.id));
    if row.target != sent.path || row.body[..] != sent.body[..] {
        out.push(h.violation(format!("its row does not hold the request {} sent", origin.id)));
    }
    Some(origin)
}

/// At least once, completed once: the app got the queued request with the event's key; the row
/// is completed by the app's 2xx answer to one delivery F, which carried the row's attempt count
/// as `Idempotency-Attempt`; attempt numbers never repeat and F is the last delivery; and every
/// delivery before F that the app answered 2xx in time was followed by a SIGKILL before the
/// next delivery (the only way a 2xx idemgate received goes unrecorded).
fn check_deliveries(
    h: &EventHistory,
    row: &Row,
    origin: &Attempt,
    run: &Inputs,
    stats: &mut InboxStats,
    out: &mut Vec<Violation>,
) {
    if h.forwards.is_empty() {
        return out.push(h.violation("acknowledged, yet it never reached the app"));
    }
    let sent = h.event.request(h.payload(origin.id));
    for f in &h.forwards {
        if f.key != h.event.key || f.path != sent.path || f.body[..] != sent.body[..] {
            out.push(
                h.violation(format!("delivery #{} is not the queued request with its key ({:?})", f.number, f.key)),
            );
        }
    }
    stats.redeliveries += h.forwards.len() - 1;
    stats.max_attempts = stats.max_attempts.max(row.attempts);
    if row.state != COMPLETED {
        let state = run.drain.states.get(&h.event.index).map_or("?", String::as_str);
        return out.push(h.violation(format!("left in state {} after the drain (admin API: {state})", row.state)));
    }
    stats.completed += 1;
    let Some(done) = row.response_forward().and_then(|n| h.forward(n)) else {
        let body = row.response_body.as_deref().map(String::from_utf8_lossy);
        return out
            .push(h.violation(format!("completed with a response that no delivery of it was answered ({body:?})")));
    };
    let app = EventHistory::app_reply(done);
    if app.is_none_or(|app| {
        !is_2xx(app.status)
            || Some(app.status) != row.response_status
            || app.body[..] != row.response_body.as_deref().unwrap_or_default()[..]
    }) {
        out.push(
            h.violation(format!("completed with a response that is not the app's 2xx answer to #{}", done.number)),
        );
    }
    if done.delivery_attempt != Some(row.attempts) {
        out.push(h.violation(format!(
            "completed after {} attempts, by delivery #{} that carried Idempotency-Attempt {:?}",
            row.attempts, done.number, done.delivery_attempt
        )));
    }
    check_attempt_numbers(h, row, done, out);
    check_exactly_once(h, done, run, stats, out);
}

fn check_attempt_numbers(h: &EventHistory, row: &Row, done: &Forward, out: &mut Vec<Violation>) {
    let mut seen = std::collections::HashSet::new();
    for f in &h.forwards {
        match f.delivery_attempt {
            None => out.push(h.violation(format!("delivery #{} carried no Idempotency-Attempt", f.number))),
            Some(n) if !seen.insert(n) => {
                out.push(h.violation(format!("Idempotency-Attempt {n} reached the app twice (#{} again)", f.number)))
            }
            Some(n) if n > row.attempts => out.push(h.violation(format!(
                "delivery #{} carried Idempotency-Attempt {n}, past the {} attempts recorded",
                f.number, row.attempts
            ))),
            Some(_) => {}
        }
        if f.arrived_ms > done.arrived_ms {
            out.push(h.violation(format!(
                "delivery #{} reached the app after #{}, which completed it",
                f.number, done.number
            )));
        }
    }
}

fn check_exactly_once(
    h: &EventHistory,
    done: &Forward,
    run: &Inputs,
    stats: &mut InboxStats,
    out: &mut Vec<Violation>,
) {
    let in_time = (run.upstream_timeout - IN_TIME_MARGIN).as_secs_f64() * 1000.0;
    let app_killed = |at: f64| run.journal.app_kills_at.iter().any(|k| (k - at).abs() <= KILL_SLACK_MS);
    for pair in h.forwards.windows(2) {
        let (f, next) = (pair[0], pair[1]);
        let Some((answered, reply)) = &f.answer else { continue };
        if f.number == done.number
            || !is_2xx(reply.status)
            || answered - f.arrived_ms > in_time
            || app_killed(*answered)
        {
            continue;
        }
        if run.journal.kills_at.iter().any(|k| *k > f.arrived_ms && *k < next.arrived_ms) {
            stats.after_lost_2xx += 1;
            continue;
        }
        out.push(h.violation(format!(
            "delivered again (#{}) though the app answered #{} with {} after {:.0} ms and no SIGKILL came between",
            next.number,
            f.number,
            reply.status,
            answered - f.arrived_ms
        )));
    }
}

fn check_process(run: &Inputs, out: &mut Vec<Violation>) {
    for (when, result) in &run.journal.integrity {
        if result != "ok" {
            out.push(global(format!("PRAGMA integrity_check {when}: {result}")));
        }
    }
    for exit in &run.journal.unexpected_exits {
        out.push(global(exit.clone()));
    }
    for line in &run.log.stderr {
        out.push(global(format!("idemgate wrote to stderr: {line}")));
    }
    for line in &run.log.errors {
        out.push(global(format!("idemgate logged an error: {line}")));
    }
    let waiting = run.rows.iter().filter(|r| r.state < COMPLETED).count();
    if waiting > 0 || !run.drain.pending.is_empty() {
        out.push(global(format!(
            "the queue did not drain: {waiting} rows queued or delivering at the end, {} events not completed by the admin API's account",
            run.drain.pending.len()
        )));
    }
    for (route, depth) in &run.drain.gauges {
        out.push(global(format!("idemgate_queue_depth{{route=\"{route}\"}} was still {depth} after the drain")));
    }
    match run.exit {
        Some(status) if status.success() => {}
        other => out.push(global(format!("the graceful stop at the end exited with {other:?}"))),
    }
}
