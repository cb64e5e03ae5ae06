//! What a failing run prints: the seed, the violations, and each failing event's deliveries and
//! forwards in the order they happened.

use super::history::Violation;
use super::model::Stream;
use super::record::{Attempt, Forward};
use std::fmt::Write;

/// The failing events' indices, in order, without repeats.
pub fn failing_events(violations: &[Violation]) -> Vec<usize> {
    let mut events: Vec<usize> = violations.iter().filter_map(|v| v.event).collect();
    events.sort_unstable();
    events.dedup();
    events
}

/// One event's attempts and forwards, merged on the run's clock.
pub fn transcript(stream: &Stream, attempts: &[Attempt], forwards: &[Forward], event: usize) -> String {
    let mut lines: Vec<(f64, String)> = Vec::new();
    let Some(e) = stream.event(event) else { return format!("e{event}: not in the stream\n") };
    for a in attempts.iter().filter(|a| a.id.event == event) {
        let flow = &e.flows[a.id.flow];
        let what = format!("{:?} {:?}", flow.kind, flow.payload).to_lowercase();
        let took = a.done_ms - a.sent_ms;
        lines.push((a.sent_ms, format!("{:<12} {what:<22} -> {} after {took:.0} ms", a.id.to_string(), a.summary())));
    }
    for f in forwards.iter().filter(|f| f.attempt.is_some_and(|a| a.event == event)) {
        let answer = match &f.answer {
            Some((ms, reply)) => format!("answered {} at {ms:.1} ms", reply.status),
            None => "never answered".into(),
        };
        let from = f.attempt.map(|a| a.to_string()).unwrap_or_default();
        let nth = f.delivery_attempt.map(|n| format!(" (Idempotency-Attempt {n})")).unwrap_or_default();
        lines.push((f.arrived_ms, format!("  app forward #{} of {from}{nth}, key {}: {answer}", f.number, f.key)));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = format!("{e}");
    for (ms, line) in lines {
        let _ = writeln!(out, "  {ms:>8.1} ms  {line}");
    }
    out
}

/// The failure report: violations, then the transcripts of (at most) the first three failing events.
pub fn report(stream: &Stream, violations: &[Violation], attempts: &[Attempt], forwards: &[Forward]) -> String {
    let mut out = format!("seed {}: {} violation(s)\n", stream.seed, violations.len());
    for v in violations.iter().take(20) {
        let _ = writeln!(out, "  - {v}");
    }
    for event in failing_events(violations).into_iter().take(3) {
        let _ = write!(out, "\n{}", transcript(stream, attempts, forwards, event));
    }
    out
}
