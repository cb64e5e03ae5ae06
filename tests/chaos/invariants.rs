//! The invariants of a chaos run, judged on the whole record at the end: the attempts, the app's
//! forwards, the records left in the database, the journal of faults and the child's output.
//! Each one holds whatever the timing of the faults was; none needs a margin.

use super::child::Log;
use super::world::Journal;
use crate::stream::history::{EventHistory, Violation, by_event, check_common};
use crate::stream::model::{Payload, Stream};
use crate::stream::record::{Attempt, Forward, Outcome};
use std::collections::HashMap;

/// Attempts of the final round, after the faults, carry try numbers from here on.
pub const FINAL_TRY: u32 = 1000;

/// A completed record as it is in the database at the end.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// The completed records, by the app forward their body came from (`"forward":N`).
pub fn read_records(db: &std::path::Path) -> (HashMap<u64, Record>, usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT key, state, status, body FROM records WHERE route <> 'idemgate:meta'").unwrap();
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<u16>>(2)?, r.get::<_, Option<Vec<u8>>>(3)?))
    });
    let (mut completed, mut unfinished) = (HashMap::new(), 0);
    for (key, state, status, body) in rows.unwrap().map(Result::unwrap) {
        let body = body.unwrap_or_default();
        let forward = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["forward"].as_u64());
        match (state, forward) {
            (1, Some(n)) => {
                completed.insert(n, Record { key, status: status.unwrap_or(0), body });
            }
            _ => unfinished += 1,
        }
    }
    (completed, unfinished)
}

#[derive(Debug, Default)]
pub struct ChaosStats {
    pub attempts: usize,
    pub forwards: usize,
    pub replays: usize,
    pub conflicts: usize,
    pub mismatches: usize,
    /// 503 store-unavailable answers, and those among them whose request had reached the app
    /// (the store failed at commit: the app's response was withheld).
    pub store_errors: usize,
    pub store_errors_after_forward: usize,
    /// Of the store errors, those answered while the database was locked, or its disk full.
    pub store_errors_locked: usize,
    pub store_errors_disk_full: usize,
    pub upstream_errors: usize,
    pub no_answer: usize,
    /// Forwards that a crash, a stop or a failed commit left unfinished, after which the key was
    /// forwarded again only once its lease had ended.
    pub after_lease: usize,
    /// 2xx answers from the app whose record is not the stored one: completions refused after a
    /// lease takeover.
    pub unstored_2xx: usize,
    /// Events that reached the app more than once (after a release, a crash or a takeover).
    pub forwarded_again: usize,
}

pub struct Inputs<'a> {
    pub stream: &'a Stream,
    pub attempts: &'a [Attempt],
    pub forwards: &'a [Forward],
    pub records: &'a HashMap<u64, Record>,
    pub unfinished_records: usize,
    pub journal: &'a Journal,
    pub log: &'a Log,
    pub exit: Option<std::process::ExitStatus>,
    pub lease: std::time::Duration,
    pub upstream_timeout: std::time::Duration,
}

pub fn check(run: &Inputs) -> (Vec<Violation>, ChaosStats) {
    let (histories, mut violations) = by_event(run.stream, run.attempts, run.forwards);
    let mut stats = ChaosStats { attempts: run.attempts.len(), forwards: run.forwards.len(), ..Default::default() };
    for h in &histories {
        check_common(h, &mut violations);
        check_event(h, run, &mut stats, &mut violations);
        stats.forwarded_again += (h.forwards.len() > 1) as usize;
    }
    for a in run.attempts {
        count(a, run, &mut stats);
    }
    check_process(run, &stats, &mut violations);
    (violations, stats)
}

fn lease_ms(run: &Inputs) -> f64 {
    run.lease.as_secs_f64() * 1000.0
}

fn global(what: String) -> Violation {
    Violation { event: None, what }
}

fn count(a: &Attempt, run: &Inputs, stats: &mut ChaosStats) {
    let within = |windows: &[(f64, f64)]| windows.iter().any(|&(from, to)| a.done_ms >= from && a.sent_ms <= to);
    let Outcome::Answered(r) = &a.outcome else {
        stats.no_answer += 1;
        return;
    };
    match r.problem().as_deref() {
        _ if r.replayed() => stats.replays += 1,
        Some("key-in-flight") => stats.conflicts += 1,
        Some("payload-mismatch") => stats.mismatches += 1,
        Some("store-unavailable") => {
            stats.store_errors += 1;
            stats.store_errors_after_forward += run.forwards.iter().any(|f| f.attempt == Some(a.id)) as usize;
            stats.store_errors_locked += within(&run.journal.locks) as usize;
            stats.store_errors_disk_full += within(&run.journal.disk_full) as usize;
        }
        Some("upstream-unreachable" | "upstream-timeout") => stats.upstream_errors += 1,
        _ => {}
    }
}

fn check_event(h: &EventHistory, run: &Inputs, stats: &mut ChaosStats, out: &mut Vec<Violation>) {
    let stored: Vec<&Forward> = h.forwards.iter().copied().filter(|f| run.records.contains_key(&f.number)).collect();
    let [stored] = stored[..] else {
        return out.push(h.violation(format!("{} stored responses at the end, not one", stored.len())));
    };
    let record = &run.records[&stored.number];
    if record.key != h.event.key {
        out.push(h.violation(format!("the record of forward #{} has key {:?}", stored.number, record.key)));
    }
    let app = EventHistory::app_reply(stored);
    if app.is_none_or(|app| app.status != record.status || app.body[..] != record.body[..]) {
        out.push(h.violation(format!("the record of forward #{} is not the app's answer to it", stored.number)));
    }
    // The stored response is the last claim's: an earlier claim's completion is refused once
    // its lease has ended and another request took the key. (A request reaches the app right
    // after its claim, so the last claim's forward is the last to arrive.)
    for f in h.forwards.iter().filter(|f| f.arrived_ms > stored.arrived_ms) {
        let what = format!(
            "the stored response is forward #{}'s, but forward #{} reached the app after it",
            stored.number, f.number
        );
        out.push(h.violation(what));
    }
    // No key forwarded after its stored response reached a client.
    if let Some(seen) = h.seen_ms(stored) {
        for f in h.forwards.iter().filter(|f| f.arrived_ms > seen) {
            let what = format!(
                "forward #{} reached the app at {:.0} ms, after the stored response (#{}) reached a client at {seen:.0} ms",
                f.number, f.arrived_ms, stored.number
            );
            out.push(h.violation(what));
        }
    }
    for a in &h.attempts {
        check_attempt(h, a, stored, run, stats, out);
    }
    check_leases(h, stored, run, stats, out);
    // Not lost: the final delivery (the original payload) gets the stored response, or 422 if a
    // redelivery with another payload took the key after the original's claims came to nothing.
    let other_payload = !h.event.provider.same_payload(h.payload(stored.attempt.unwrap()), Payload::Original);
    match h.attempts.iter().rev().find(|a| a.id.try_ >= FINAL_TRY) {
        Some(last) => match last.reply() {
            Some(r) if (200..300).contains(&r.status) && r.forward() == Some(stored.number) => {}
            Some(r) if other_payload && r.problem().as_deref() == Some("payload-mismatch") => {}
            _ => out.push(h.violation(format!("the final delivery {} got {}", last.id, last.summary()))),
        },
        None => out.push(h.violation("no final delivery was made")),
    }
}

fn check_attempt(
    h: &EventHistory,
    a: &Attempt,
    stored: &Forward,
    run: &Inputs,
    stats: &mut ChaosStats,
    out: &mut Vec<Violation>,
) {
    let Some(r) = a.reply() else { return };
    if r.replayed() && r.forward() != Some(stored.number) {
        out.push(h.violation(format!(
            "{} got a replay of #{:?}; the stored response is #{}",
            a.id,
            r.forward(),
            stored.number
        )));
    }
    if !r.replayed() && (200..300).contains(&r.status) && r.forward() != Some(stored.number) {
        stats.unstored_2xx += 1;
    }
    let own = h.forwards_of(a.id);
    if r.problem().as_deref() == Some("store-unavailable") {
        // A 503 after a forward is a completion the store refused: the app's answer was a 2xx.
        if let Some(f) = own.first().filter(|f| !f.status().is_some_and(|s| (200..300).contains(&s))) {
            out.push(h.violation(format!(
                "{} got 503 after forward #{}, whose answer was {:?}",
                a.id,
                f.number,
                f.status()
            )));
        }
    }
    for &(from, to) in &run.journal.locks {
        // While another process holds the write lock, no claim commits: no forward, and every
        // answer is a replay or a 422 from memory, or a 503.
        if a.sent_ms >= from && a.done_ms <= to {
            let allowed =
                r.replayed() || matches!(r.problem().as_deref(), Some("store-unavailable" | "payload-mismatch"));
            if !allowed {
                out.push(h.violation(format!("{} got {} while the database was locked", a.id, r.summary())));
            }
        }
        if let Some(f) = own.iter().find(|f| a.sent_ms >= from && f.arrived_ms < to) {
            out.push(h.violation(format!("{} was forwarded (#{}) while the database was locked", a.id, f.number)));
        }
    }
}

/// A claim outlives a crash: a forward that was not stored keeps its key until its lease ends,
/// so the next forward comes a lease after it was sent, at the earliest, when it was cut short
/// without a release: the app answered 2xx in time (then the process died or stopped before the
/// commit, or the commit failed), or the app never answered because idemgate was SIGKILLed
/// while the request was inside. Forwards the app answered late (504) or whose app was killed
/// (502) were released, and are not judged.
fn check_leases(h: &EventHistory, stored: &Forward, run: &Inputs, stats: &mut ChaosStats, out: &mut Vec<Violation>) {
    let lease = lease_ms(run);
    let in_time = run.upstream_timeout.as_secs_f64() * 1000.0 - 100.0;
    let app_killed = |from: f64, to: f64| run.journal.app_kills_at.iter().any(|k| *k > from - 100.0 && *k < to + 100.0);
    for pair in h.forwards.windows(2) {
        let (cut, next) = (pair[0], pair[1]);
        let unfinished = match &cut.answer {
            Some((answered, reply)) => {
                (200..300).contains(&reply.status)
                    && answered - cut.arrived_ms <= in_time
                    && !app_killed(*answered, *answered)
            }
            None => run
                .journal
                .kills_at
                .iter()
                .any(|k| *k > cut.arrived_ms && k - cut.arrived_ms <= in_time && !app_killed(cut.arrived_ms, *k)),
        };
        if cut.number == stored.number || !unfinished {
            continue;
        }
        stats.after_lease += 1;
        let sent = cut.attempt.and_then(|id| h.attempt(id)).map_or(cut.arrived_ms, |a| a.sent_ms);
        if next.arrived_ms < sent + lease {
            out.push(h.violation(format!(
                "forward #{} came {:.0} ms after forward #{} was sent, within its lease ({lease:.0} ms), though #{} was never stored",
                next.number,
                next.arrived_ms - sent,
                cut.number,
                cut.number
            )));
        }
    }
}

fn check_process(run: &Inputs, stats: &ChaosStats, out: &mut Vec<Violation>) {
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
    if run.unfinished_records > 0 {
        out.push(global(format!("{} records were left unfinished after the final round", run.unfinished_records)));
    }
    if stats.unstored_2xx > run.log.lost_claims {
        out.push(global(format!(
            "{} 2xx answers were not the stored response, but idemgate logged only {} lost claims",
            stats.unstored_2xx, run.log.lost_claims
        )));
    }
    match run.exit {
        Some(status) if status.success() => {}
        other => out.push(global(format!("the graceful stop at the end exited with {other:?}"))),
    }
}
