//! The lines a chaos run prints after its judge: what was done to idemgate, and what came of it.

use super::child::Log;
use super::disk::Disk;
use super::inbox::Drain;
use super::inbox_invariants::InboxStats;
use super::invariants::ChaosStats;
use super::world::Journal;

fn integrity(journal: &Journal) -> String {
    let ok = journal.integrity.iter().filter(|(_, r)| r == "ok").count();
    format!("{ok} of {} ok", journal.integrity.len())
}

/// The sync profiles' summary.
pub fn sync(journal: &Journal, stats: &ChaosStats, log: &Log, disk: &Disk) -> String {
    format!(
        "  kills survived:        {} SIGKILL + restart ({} with a request inside the app), {} SIGSTOP past the lease, {} app kills
  store faults:          {} write locks past the busy timeout, {} disk-full spells ({})
  integrity_check:       {}
  deliveries:            {} attempts, {} forwards to the app, {} without an answer (kills, stops, timeouts)
  duplicates suppressed: {} ({} replays, {} conflicts 409, {} mismatches 422)
  store errors:          {} answered 503 ({} while locked, {} with the disk full; {} after the app had answered: the response withheld)
  upstream errors:       {} answered 502/504 (the app killed or held)
  forwarded again:       {} events (after a release, a crash or a lease takeover); {} claims left unfinished, each
                         forwarded again only after its lease; {} lost claims logged",
        journal.kills,
        journal.kills_mid_request,
        journal.stops,
        journal.app_kills,
        journal.locks.len(),
        journal.disk_full.len(),
        disk.describe(),
        integrity(journal),
        stats.attempts,
        stats.forwards,
        stats.no_answer,
        stats.replays + stats.conflicts + stats.mismatches,
        stats.replays,
        stats.conflicts,
        stats.mismatches,
        stats.store_errors,
        stats.store_errors_locked,
        stats.store_errors_disk_full,
        stats.store_errors_after_forward,
        stats.upstream_errors,
        stats.forwarded_again,
        stats.after_lease,
        log.lost_claims,
    )
}

/// The async profile's summary.
pub fn inbox(journal: &Journal, stats: &InboxStats, drain: &Drain, log: &Log, events: usize) -> String {
    format!(
        "  kills survived:        {} SIGKILL + restart ({} with a delivery inside the app, {} after the app had answered
                         a stopped idemgate), {} app kills
  integrity_check:       {}
  senders:               {} attempts: {} acknowledged as new, {} as duplicates, {} refused, {} without an answer
                         (idemgate down or killed, client timeouts)
  deliveries:            {} to the app for {events} events; {} delivered again ({} after a 2xx that a SIGKILL kept
                         from the store, the rest after a failed attempt); at most {} attempts for one event;
                         {} records refused after a lapsed lease or failed (logged)
  store:                 {} completed, {} dead letters; the queue drained {:.1} s after the final round",
        journal.kills,
        journal.kills_mid_request,
        journal.kills_after_answer,
        journal.app_kills,
        integrity(journal),
        stats.attempts,
        stats.fresh_acks,
        stats.replayed_acks,
        stats.refused,
        stats.no_answer,
        stats.deliveries,
        stats.redeliveries,
        stats.after_lost_2xx,
        stats.max_attempts,
        log.lapsed_deliveries,
        stats.completed,
        stats.dead,
        drain.took.as_secs_f64(),
    )
}
