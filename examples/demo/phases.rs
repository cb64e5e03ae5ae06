//! The demo's four phases, each printing one line, all adding to one [`Tally`].

use crate::events::Event;
use crate::processes::{Launcher, Proxy};
use crate::sender::{Answer, Sender};
use crate::summary::Tally;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// (event index, one sender's attempts), in no particular order.
type Results = Vec<(usize, Vec<Answer>)>;

/// What the phases did: every answer, and whether idemgate stopped with exit code 0 on SIGTERM.
pub struct Outcome {
    pub tally: Tally,
    pub restarted: bool,
    pub stopped_cleanly: bool,
}

/// Storm, redeliveries, restart, everything once more. Without `proxy` (`--bypass`), the same
/// traffic goes to `receiver_url` and nothing is restarted.
pub async fn run(
    sender: &Sender,
    events: Arc<Vec<Event>>,
    receiver_url: &str,
    launcher: &Launcher,
    mut proxy: Option<Proxy>,
) -> Result<Outcome, String> {
    let base =
        |proxy: &Option<Proxy>| proxy.as_ref().map_or(receiver_url.to_string(), |p| format!("http://{}", p.addr));
    let mut tally = Tally::new(events.len());

    let phase = Instant::now();
    let results = storm(sender, &base(&proxy), &events).await;
    let slow = events.iter().filter(|e| e.plan.slow).count();
    println!("storm: {} attempts in {:.1?}, slow events: {slow}", attempts(&results), phase.elapsed());
    tally.add_all(results, false);

    let phase = Instant::now();
    let results = redeliveries(sender, &base(&proxy), &events).await;
    println!("redeliveries: {} attempts in {:.1?}", attempts(&results), phase.elapsed());
    tally.add_all(results, false);

    let mut stopped_cleanly = true;
    if let Some(running) = proxy.take() {
        let status = running.stop().await?;
        stopped_cleanly = status.success();
        proxy = Some(launcher.start().await?);
        let exit = status.code().map_or_else(|| status.to_string(), |code| format!("exit code {code}"));
        println!("restart: SIGTERM, idemgate stopped ({exit}) and started again on the same database");
    } else {
        println!("restart: none, there is no idemgate to restart");
    }

    let phase = Instant::now();
    let results = once_each(sender, &base(&proxy), &events).await;
    println!("everything once more: {} attempts in {:.1?}", attempts(&results), phase.elapsed());
    let restarted = proxy.is_some();
    tally.add_all(results, restarted);
    Ok(Outcome { tally, restarted, stopped_cleanly })
}

/// Every event at once; an event's copies wait for each other and leave together.
async fn storm(sender: &Sender, base: &str, events: &Arc<Vec<Event>>) -> Results {
    let mut tasks = JoinSet::new();
    for (index, event) in events.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(event.plan.copies));
        for _ in 0..event.plan.copies {
            let (sender, base, events, barrier) = (sender.clone(), base.to_string(), events.clone(), barrier.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                (index, sender.deliver(&base, &events[index]).await)
            });
        }
    }
    tasks.join_all().await
}

/// Each event's plain redeliveries, one after another; the events side by side.
async fn redeliveries(sender: &Sender, base: &str, events: &Arc<Vec<Event>>) -> Results {
    let mut tasks = JoinSet::new();
    for (index, event) in events.iter().enumerate() {
        let (sender, base, events, times) = (sender.clone(), base.to_string(), events.clone(), event.plan.redeliveries);
        tasks.spawn(async move {
            let mut results = Vec::new();
            for _ in 0..times {
                results.push((index, sender.deliver(&base, &events[index]).await));
            }
            results
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

/// Every event delivered once more, all at once.
async fn once_each(sender: &Sender, base: &str, events: &Arc<Vec<Event>>) -> Results {
    let mut tasks = JoinSet::new();
    for index in 0..events.len() {
        let (sender, base, events) = (sender.clone(), base.to_string(), events.clone());
        tasks.spawn(async move { (index, sender.deliver(&base, &events[index]).await) });
    }
    tasks.join_all().await
}

fn attempts(results: &Results) -> usize {
    results.iter().map(|(_, answers)| answers.len()).sum()
}
