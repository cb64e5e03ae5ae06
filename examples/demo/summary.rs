//! What was sent against what the app saw, printed as `label  number` lines that
//! `tests/demo.rs` reads back.

use crate::events::Event;
use crate::sender::Answer;
use bytes::Bytes;
use std::collections::HashMap;

/// Every answer the senders got, by event.
#[derive(Default)]
pub struct Tally {
    /// Per event (same index as the storm), every attempt's answer.
    answers: Vec<Vec<Answer>>,
    /// Senders (a delivery and its retries, until a 2xx or the schedule ends), and how many of
    /// them got a 2xx in the end.
    senders: usize,
    senders_answered: usize,
    /// Answers after idemgate was restarted, and how many of them were replays.
    after_restart: usize,
    replayed_after_restart: usize,
}

impl Tally {
    pub fn new(events: usize) -> Tally {
        Tally { answers: vec![Vec::new(); events], ..Tally::default() }
    }

    /// Every sender's attempts, as (event index, attempts).
    pub fn add_all(&mut self, results: Vec<(usize, Vec<Answer>)>, after_restart: bool) {
        for (index, attempts) in results {
            self.add(index, attempts, after_restart);
        }
    }

    /// One sender's attempts for event `index`.
    fn add(&mut self, index: usize, attempts: Vec<Answer>, after_restart: bool) {
        self.senders += 1;
        self.senders_answered += usize::from(attempts.last().is_some_and(Answer::is_success));
        if after_restart {
            self.after_restart += attempts.len();
            self.replayed_after_restart += attempts.iter().filter(|a| matches!(a, Answer::Replayed(_))).count();
        }
        if let Some(slot) = self.answers.get_mut(index) {
            slot.extend(attempts);
        }
    }

    fn count(&self, f: impl Fn(&Answer) -> bool) -> usize {
        self.answers.iter().flatten().filter(|a| f(a)).count()
    }
}

/// The summary's lines, and whether the demo showed what it set out to.
pub struct Report {
    lines: Vec<(String, usize)>,
    pub exactly_once: bool,
    pub consistent: bool,
    others: Vec<String>,
}

impl Report {
    /// `seen` is the receiver's `/_seen`: deliveries per key.
    pub fn new(events: &[Event], tally: &Tally, seen: &HashMap<String, u64>, restarted: bool) -> Report {
        let app_count = |e: &Event| seen.get(&e.key).copied().unwrap_or(0);
        let once = events.iter().filter(|e| app_count(e) == 1).count();
        let twice = events.iter().filter(|e| app_count(e) >= 2).count();
        let never = events.iter().filter(|e| app_count(e) == 0).count();
        let app_total: u64 = seen.values().sum();
        let consistent = events.len() - tally.answers.iter().filter(|a| !one_body(a)).count();
        let others: Vec<String> = tally
            .answers
            .iter()
            .flatten()
            .filter_map(|a| if let Answer::Other(what) = a { Some(what.clone()) } else { None })
            .collect();
        let mut lines = vec![
            ("events".to_string(), events.len()),
            ("deliveries sent".to_string(), tally.answers.iter().map(Vec::len).sum()),
            ("deliveries the app got".to_string(), app_total as usize),
            ("events seen exactly once".to_string(), once),
            ("events seen twice or more".to_string(), twice),
            ("events never seen".to_string(), never),
            ("answers 2xx first".to_string(), tally.count(|a| matches!(a, Answer::First(_)))),
            (
                "answers replayed (Idempotent-Replayed: true)".to_string(),
                tally.count(|a| matches!(a, Answer::Replayed(_))),
            ),
            ("answers 409 in flight".to_string(), tally.count(|a| matches!(a, Answer::InFlight))),
            ("sender timed out, no answer".to_string(), tally.count(|a| matches!(a, Answer::TimedOut))),
            ("other answers".to_string(), others.len()),
            ("senders (a delivery and its retries)".to_string(), tally.senders),
            ("senders that got a 2xx in the end".to_string(), tally.senders_answered),
            ("events whose 2xx answers all had one body".to_string(), consistent),
        ];
        if restarted {
            lines.push(("answers after the restart".to_string(), tally.after_restart));
            lines.push(("replayed after the restart".to_string(), tally.replayed_after_restart));
        }
        Report {
            lines,
            exactly_once: once == events.len() && app_total == events.len() as u64,
            consistent: consistent == events.len(),
            others,
        }
    }

    pub fn print(&self) {
        println!("summary");
        for (label, n) in &self.lines {
            println!("  {label:<46}{n:>6}");
        }
        let mut others: HashMap<&str, usize> = HashMap::new();
        for what in &self.others {
            *others.entry(what).or_default() += 1;
        }
        for (what, n) in others {
            println!("    other answer: {what} (x{n})");
        }
    }
}

/// Whether every 2xx answer an event got (first or replayed) carried the same body: replays are
/// the stored answer, so a different body means the app was asked again.
fn one_body(answers: &[Answer]) -> bool {
    let mut bodies = answers.iter().filter_map(|a| match a {
        Answer::First(body) | Answer::Replayed(body) => Some(body),
        _ => None,
    });
    let first: Option<&Bytes> = bodies.next();
    bodies.all(|b| Some(b) == first)
}

pub fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}
