//! A duplicate-delivery storm against idemgate, with the app's own count at the end.
//!
//! ```sh
//! cargo build --bins --examples && target/debug/examples/demo
//! ```
//!
//! It starts the example receiver (`examples/receiver.rs`) and idemgate, both on free ports of
//! 127.0.0.1, idemgate with `examples/demo/idemgate.yaml` (a Stripe route that answers 409 to a
//! duplicate in flight, a GitHub route that makes it wait) and its SQLite file in a temporary
//! directory. Then it delivers Stripe- and GitHub-shaped events, signed, the way providers do:
//!
//! 1. **storm**: every event at once, several of them as concurrent copies sent at the same
//!    moment; some events make the app slower than the sender's timeout, so the sender hangs up,
//!    retries at once (409 while the app still works), waits `Retry-After` and retries again
//!    (the stored answer, replayed);
//! 2. **redeliveries**: plain resends of some events;
//! 3. **restart**: idemgate gets SIGTERM and is started again on the same database;
//! 4. **after the restart**: every event delivered once more.
//!
//! A delivery is a series of attempts that ends with a 2xx (or after 5 attempts). At the end it
//! asks the receiver what it saw (`GET /_seen`) and prints the summary; the last line is
//! `every event reached the app exactly once: yes`, or `no` and exit status 1.
//!
//! Options: `--seed N` repeats a storm (the seed is printed); `--events N` (default 24);
//! `--bypass` sends the same storm straight to the receiver, to see what the app gets without
//! idemgate; `--verbose` prints each delivery the receiver prints; `--idemgate PATH` and
//! `--receiver PATH` if the binaries are not where cargo put them (`target/<profile>/idemgate`,
//! `target/<profile>/examples/receiver`). Exit status 2: the demo could not run.

mod events;
mod phases;
mod processes;
mod sender;
mod summary;

use clap::Parser;
use processes::{Launcher, Receiver};
use sender::Sender;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use summary::{Report, yes};

/// The demo's idemgate config, written beside its database.
const CONFIG: &str = include_str!("idemgate.yaml");
/// The whole demo takes a few seconds; past this something hangs, and the demo says so.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(about = "A duplicate-delivery storm against idemgate, with the app's own count at the end")]
struct Args {
    /// Seed of the storm (default: from the clock). The same seed sends the same storm.
    #[arg(long)]
    seed: Option<u64>,
    /// How many events.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u16).range(3..=1000))]
    events: u16,
    /// Send straight to the receiver, without idemgate.
    #[arg(long)]
    bypass: bool,
    /// Print each delivery as the receiver prints it.
    #[arg(long)]
    verbose: bool,
    /// The idemgate binary (default: target/<profile>/idemgate beside this example's folder).
    #[arg(long)]
    idemgate: Option<PathBuf>,
    /// The receiver example (default: beside this example).
    #[arg(long)]
    receiver: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match tokio::time::timeout(DEADLINE, run(args)).await {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("demo: {e}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("demo: not done within {DEADLINE:?}");
            ExitCode::from(2)
        }
    }
}

/// The demo from start to summary; whether everything it checks held.
async fn run(args: Args) -> Result<bool, String> {
    let (idemgate_bin, receiver_bin) = processes::locate(args.idemgate, args.receiver)?;
    let seed = args.seed.unwrap_or_else(clock_seed);
    let (events, secrets) = events::storm(seed, usize::from(args.events));
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let config = dir.path().join("idemgate.yaml");
    std::fs::write(&config, CONFIG).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let db = dir.path().join("idemgate.db");
    let receiver = Receiver::start(&receiver_bin, args.verbose).await?;
    let env = vec![
        ("IDEMGATE_UPSTREAM__URL", receiver.url.clone()),
        ("IDEMGATE_STORE__SQLITE__PATH", db.display().to_string()),
        ("DEMO_STRIPE_SECRET", secrets.stripe.clone()),
        ("DEMO_GITHUB_SECRET", secrets.github.clone()),
    ];
    let launcher = Launcher { bin: idemgate_bin, config, env };

    let stripe = events.iter().filter(|e| e.provider == events::Provider::Stripe).count();
    println!("idemgate demo: seed {seed}, {} events ({stripe} Stripe, {} GitHub)", events.len(), events.len() - stripe);
    println!("  receiver  {}", receiver.url);
    let proxy = if args.bypass {
        println!("  idemgate  bypassed: every delivery goes straight to the receiver");
        None
    } else {
        let proxy = launcher.start().await?;
        println!("  idemgate  http://{} (admin {}), database {}", proxy.addr, proxy.admin, db.display());
        Some(proxy)
    };
    let sender = Sender::new(&secrets, args.bypass);
    let events = Arc::new(events);
    let outcome = phases::run(&sender, events.clone(), &receiver.url, &launcher, proxy).await?;

    let seen = app_seen(&sender, &receiver.url).await?;
    println!();
    let report = Report::new(&events, &outcome.tally, &seen, outcome.restarted);
    report.print();
    if !report.consistent {
        println!("every replay carried the event's first answer: no");
    }
    if !outcome.stopped_cleanly {
        println!("idemgate exited 0 on SIGTERM: no");
    }
    // Last, so that it is the line to look for.
    println!("every event reached the app exactly once: {}", yes(report.exactly_once));
    Ok(report.exactly_once && report.consistent && outcome.stopped_cleanly)
}

/// The receiver's own count of deliveries per key.
async fn app_seen(sender: &Sender, receiver: &str) -> Result<HashMap<String, u64>, String> {
    let seen = sender.get_json(&format!("{receiver}/_seen")).await?;
    let keys = seen["keys"].as_object().ok_or("the receiver's /_seen has no \"keys\"")?;
    Ok(keys.iter().map(|(key, n)| (key.clone(), n.as_u64().unwrap_or(0))).collect())
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_secs() ^ u64::from(now.subsec_nanos())
}
