//! The demo (`examples/demo`) as a person runs it: the built example binary, which starts the
//! receiver example and the real idemgate binary, sends its storm and prints a summary. These
//! tests read that summary back: through idemgate every event reaches the app exactly once and
//! the counts add up; without it, the same storm reaches the app more than once and the demo
//! says so with a failing exit status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

/// The demo takes a few seconds; this is a bound for a loaded machine, not an expectation.
const LIMIT: Duration = Duration::from_secs(60);

/// `target/<profile>/examples/`, from this test's own `target/<profile>/deps/demo-<hash>`.
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    profile_dir.join("examples")
}

/// `cargo test` builds the examples, but `cargo test --test demo` does not, and an old demo
/// binary would test old code: build both, as cargo would (a no-op when they are fresh).
fn build_examples() {
    let profile_dir = examples_dir().parent().expect("target/<profile>").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None => panic!("no profile directory above {}", profile_dir.display()),
    };
    let target_dir = profile_dir.parent().expect("the target directory");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "demo", "--example", "receiver", "--profile", &profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the demo examples failed");
}

/// Runs the demo with `args` and the idemgate binary this test was built with.
fn run_demo(args: &[&str]) -> (Output, String) {
    build_examples();
    let dir = examples_dir();
    let mut command = Command::new(dir.join("demo"));
    command
        .args(args)
        .arg("--idemgate")
        .arg(env!("CARGO_BIN_EXE_idemgate"))
        .arg("--receiver")
        .arg(dir.join("receiver"));
    // Awaits the demo's exit on a thread, so that a hung demo fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(command.output());
    });
    let output = rx.recv_timeout(LIMIT).expect("the demo did not finish in time").expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    (output, stdout)
}

/// The summary's `  label   number` lines.
fn summary(stdout: &str) -> HashMap<String, usize> {
    let start = stdout.find("\nsummary\n").expect("a summary");
    stdout[start..]
        .lines()
        .filter(|line| line.starts_with("  ") && !line.starts_with("    "))
        .filter_map(|line| {
            let (label, n) = line.trim().rsplit_once(' ')?;
            Some((label.trim().to_string(), n.parse().ok()?))
        })
        .collect()
}

fn get(summary: &HashMap<String, usize>, label: &str) -> usize {
    *summary.get(label).unwrap_or_else(|| panic!("no {label:?} in the summary: {summary:?}"))
}

#[test]
fn through_idemgate_every_event_reaches_the_app_exactly_once() {
    let (output, stdout) = run_demo(&["--seed", "20261127", "--events", "24"]);
    assert!(output.status.success(), "the demo failed: {:?}", output.status);
    assert_eq!(stdout.lines().last(), Some("every event reached the app exactly once: yes"));
    assert!(stdout.contains("restart: SIGTERM, idemgate stopped (exit code 0)"), "{stdout}");

    let s = summary(&stdout);
    let events = get(&s, "events");
    assert_eq!(events, 24);
    assert_eq!(get(&s, "deliveries the app got"), events);
    assert_eq!(get(&s, "events seen exactly once"), events);
    assert_eq!(get(&s, "events seen twice or more"), 0);
    assert_eq!(get(&s, "events never seen"), 0);

    let (first, replayed) = (get(&s, "answers 2xx first"), get(&s, "answers replayed (Idempotent-Replayed: true)"));
    let (in_flight, timed_out) = (get(&s, "answers 409 in flight"), get(&s, "sender timed out, no answer"));
    let sent = get(&s, "deliveries sent");
    assert_eq!(first + replayed + in_flight + timed_out + get(&s, "other answers"), sent, "every attempt counted once");
    assert_eq!(get(&s, "other answers"), 0);
    // The app answered each event once: to its sender, or to one that had hung up already.
    assert!(first <= events && first + timed_out >= events, "first {first}, timed out {timed_out}");
    assert!(sent > 2 * events, "a storm of duplicates, not a trickle: {sent} for {events} events");
    // The storm always holds a slow event (timeout, then 409) and concurrent copies.
    assert!(timed_out >= 1 && in_flight >= 1, "timed out {timed_out}, 409 {in_flight}");
    assert_eq!(get(&s, "senders that got a 2xx in the end"), get(&s, "senders (a delivery and its retries)"));
    assert_eq!(get(&s, "events whose 2xx answers all had one body"), events);
    assert_eq!(get(&s, "answers after the restart"), events);
    assert_eq!(get(&s, "replayed after the restart"), events, "replayed from the database after SIGTERM");
}

#[test]
fn without_idemgate_the_same_storm_reaches_the_app_more_than_once() {
    let (output, stdout) = run_demo(&["--seed", "20261127", "--events", "3", "--bypass"]);
    assert_eq!(output.status.code(), Some(1), "the demo must fail its own check");
    assert_eq!(stdout.lines().last(), Some("every event reached the app exactly once: no"));
    let s = summary(&stdout);
    assert_eq!(get(&s, "events seen twice or more"), 3);
    assert!(get(&s, "deliveries the app got") > 3);
    assert_eq!(get(&s, "answers replayed (Idempotent-Replayed: true)"), 0);
}
