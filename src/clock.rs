//! The process clock: wall-clock milliseconds since the epoch, as records need them (they outlive
//! the process and are shared by replicas), but advanced by the monotonic clock, so that a step
//! of the system clock does not shorten or lengthen the leases and ttls this process computes.
//!
//! The clock is anchored to the wall clock when it is first read. From then on it moves exactly
//! as the monotonic clock does, and every reading compares it with the wall clock:
//!
//! - A disagreement of up to [`STEP_TOLERANCE_MS`] is ignored. That covers the small steps that
//!   NTP daemons make (ntpd steps past 128 ms, chrony's `makestep` past 1 s only at start) and a
//!   leap second inserted as a step: leases and ttls stay exact, and time never runs backwards.
//! - A larger disagreement that lasts [`STEP_CONFIRM_MS`] of monotonic time is followed: the clock
//!   re-anchors to the wall clock and logs a warning with the size of the step. A step that is
//!   undone within that time (a wrong `date -s` put right, a glitching time source) is never seen.
//!
//! Why follow large steps at all: the wall clock is what other replicas sharing a store, and this
//! process after a restart, measure leases and ttls by. A clock anchored wrongly (booted before NTP
//! had set the time, or resumed after the machine was suspended, which the monotonic clock does
//! not count) would otherwise stay wrong until a restart; a replica an hour behind makes its own
//! leases look ended to the others, which then take its keys over and forward them twice. Lasting
//! agreement with the shared clock is worth more than the exact length of the few leases in flight
//! at the moment of a large step.
//!
//! One clock per process, like the operating system's clocks it wraps: [`now_ms`] reads it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The largest disagreement with the wall clock that is ignored for good.
pub const STEP_TOLERANCE_MS: i64 = 1_000;

/// How long a larger disagreement must last before the clock follows the wall clock.
pub const STEP_CONFIRM_MS: i64 = 10_000;

/// No disagreement is pending.
const AGREED: i64 = i64::MIN;

/// Where a clock takes its time from; injectable so that tests can step the wall clock.
pub trait TimeSource: Send + Sync {
    /// Milliseconds since the Unix epoch, as the system clock says now; it may be stepped.
    fn wall_ms(&self) -> i64;
    /// Milliseconds since an arbitrary fixed origin; never steps, never runs backwards.
    fn monotonic_ms(&self) -> i64;
}

/// The operating system's clocks.
pub struct SystemSource {
    origin: Instant,
}

impl Default for SystemSource {
    fn default() -> SystemSource {
        SystemSource { origin: Instant::now() }
    }
}

impl TimeSource for SystemSource {
    fn wall_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
    fn monotonic_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64
    }
}

/// Wall-clock time advanced by the monotonic clock; see the module docs for when it re-anchors.
pub struct ProcessClock<S = SystemSource> {
    source: S,
    /// Wall minus monotonic milliseconds at the last anchoring: the reading is monotonic + offset.
    offset: AtomicI64,
    /// When (monotonic) the wall clock was first seen off by more than the tolerance, or [`AGREED`].
    disagreeing_since: AtomicI64,
}

impl<S: TimeSource> ProcessClock<S> {
    /// Anchored to the source's wall clock now.
    pub fn new(source: S) -> ProcessClock<S> {
        let offset = source.wall_ms().saturating_sub(source.monotonic_ms());
        ProcessClock { source, offset: AtomicI64::new(offset), disagreeing_since: AtomicI64::new(AGREED) }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        let monotonic = self.source.monotonic_ms();
        let offset = self.offset.load(Ordering::Acquire);
        let now = monotonic.saturating_add(offset);
        let wall = self.source.wall_ms();
        let step = wall.saturating_sub(now);
        if step.abs() <= STEP_TOLERANCE_MS {
            // Load first: the common case then writes nothing that readers on other cores share.
            if self.disagreeing_since.load(Ordering::Relaxed) != AGREED {
                self.disagreeing_since.store(AGREED, Ordering::Relaxed);
            }
            return now;
        }
        let since =
            match self.disagreeing_since.compare_exchange(AGREED, monotonic, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => monotonic,
                Err(since) => since,
            };
        if monotonic.saturating_sub(since) < STEP_CONFIRM_MS {
            return now;
        }
        let anchored = wall.saturating_sub(monotonic);
        // Of several threads that see the step at once, one re-anchors and says so.
        if self.offset.compare_exchange(offset, anchored, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.disagreeing_since.store(AGREED, Ordering::Relaxed);
            tracing::warn!(
                step_ms = step,
                "the system clock was stepped; idemgate follows it from now on (leases and ttls already running \
                 end that much earlier or later): keep replicas' clocks synchronised"
            );
        }
        monotonic.saturating_add(self.offset.load(Ordering::Acquire))
    }
}

static PROCESS: LazyLock<ProcessClock> = LazyLock::new(|| ProcessClock::new(SystemSource::default()));

/// Milliseconds since the Unix epoch by the process clock.
pub fn now_ms() -> i64 {
    PROCESS.now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const HOUR_MS: i64 = 60 * 60 * 1000;
    /// A plausible wall-clock time (2025-01-01), far from zero so that steps back stay positive.
    const START_MS: i64 = 1_735_689_600_000;

    /// A wall clock that the test steps and a monotonic clock that the test advances.
    #[derive(Default)]
    struct FakeSource {
        wall: AtomicI64,
        monotonic: AtomicI64,
    }

    impl FakeSource {
        fn new() -> Arc<FakeSource> {
            let source = Arc::new(FakeSource::default());
            source.wall.store(START_MS, Ordering::Relaxed);
            source.monotonic.store(5_000, Ordering::Relaxed);
            source
        }
        /// Real time passes: both clocks move together.
        fn elapse(&self, ms: i64) {
            self.wall.fetch_add(ms, Ordering::Relaxed);
            self.monotonic.fetch_add(ms, Ordering::Relaxed);
        }
        /// Someone sets the system clock.
        fn step_wall(&self, ms: i64) {
            self.wall.fetch_add(ms, Ordering::Relaxed);
        }
    }

    impl TimeSource for Arc<FakeSource> {
        fn wall_ms(&self) -> i64 {
            self.wall.load(Ordering::Relaxed)
        }
        fn monotonic_ms(&self) -> i64 {
            self.monotonic.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn reads_the_wall_clock_when_nothing_is_stepped() {
        let source = FakeSource::new();
        let clock = ProcessClock::new(source.clone());
        assert_eq!(clock.now_ms(), START_MS);
        source.elapse(60_000);
        assert_eq!(clock.now_ms(), START_MS + 60_000);
    }

    #[test]
    fn a_step_of_an_hour_either_way_moves_the_clock_only_by_the_time_that_passed() {
        for step in [HOUR_MS, -HOUR_MS] {
            let source = FakeSource::new();
            let clock = ProcessClock::new(source.clone());
            source.elapse(250);
            assert_eq!(clock.now_ms(), START_MS + 250);
            source.step_wall(step);
            assert_eq!(clock.now_ms(), START_MS + 250, "step {step}");
            // A lease taken just before the step still ends when its time has passed.
            source.elapse(STEP_CONFIRM_MS - 1);
            assert_eq!(clock.now_ms(), START_MS + 250 + STEP_CONFIRM_MS - 1, "step {step}");
        }
    }

    #[test]
    fn a_step_undone_before_it_is_confirmed_is_never_seen() {
        let source = FakeSource::new();
        let clock = ProcessClock::new(source.clone());
        source.step_wall(HOUR_MS);
        assert_eq!(clock.now_ms(), START_MS);
        source.elapse(STEP_CONFIRM_MS - 1);
        assert_eq!(clock.now_ms(), START_MS + STEP_CONFIRM_MS - 1);
        source.step_wall(-HOUR_MS);
        assert_eq!(clock.now_ms(), START_MS + STEP_CONFIRM_MS - 1);
        // The disagreement ended, so a new step waits for a confirmation of its own.
        source.step_wall(-HOUR_MS);
        assert_eq!(clock.now_ms(), START_MS + STEP_CONFIRM_MS - 1);
        source.elapse(STEP_CONFIRM_MS - 1);
        assert_eq!(clock.now_ms(), START_MS + 2 * STEP_CONFIRM_MS - 2);
    }

    #[test]
    fn a_lasting_step_is_followed_once_confirmed() {
        for step in [HOUR_MS, -HOUR_MS] {
            let source = FakeSource::new();
            let clock = ProcessClock::new(source.clone());
            source.step_wall(step);
            assert_eq!(clock.now_ms(), START_MS, "step {step}: not yet");
            source.elapse(STEP_CONFIRM_MS);
            assert_eq!(clock.now_ms(), START_MS + step + STEP_CONFIRM_MS, "step {step}: followed");
            source.elapse(1_000);
            assert_eq!(clock.now_ms(), START_MS + step + STEP_CONFIRM_MS + 1_000, "step {step}: and kept");
        }
    }

    #[test]
    fn small_steps_are_ignored_for_good_and_time_never_runs_backwards() {
        let source = FakeSource::new();
        let clock = ProcessClock::new(source.clone());
        let mut last = clock.now_ms();
        // A leap second inserted as a step back, then NTP corrections both ways: the wall clock
        // ends up 300 ms behind, never more than the tolerance away.
        for step in [-1_000, 400, 600, -300] {
            source.step_wall(step);
            for _ in 0..3 {
                source.elapse(STEP_CONFIRM_MS);
                let now = clock.now_ms();
                assert!(now >= last, "ran backwards after a step of {step} ms");
                last = now;
            }
        }
        assert_eq!(last, START_MS + 12 * STEP_CONFIRM_MS);
    }

    #[test]
    fn a_clock_anchored_wrongly_at_start_catches_up_with_the_correction() {
        // Booted an hour behind; NTP then sets the time right.
        let source = FakeSource::new();
        source.step_wall(-HOUR_MS);
        let clock = ProcessClock::new(source.clone());
        assert_eq!(clock.now_ms(), START_MS - HOUR_MS);
        source.step_wall(HOUR_MS);
        assert_eq!(clock.now_ms(), START_MS - HOUR_MS);
        source.elapse(STEP_CONFIRM_MS);
        assert_eq!(clock.now_ms(), START_MS + STEP_CONFIRM_MS);
    }

    #[test]
    fn the_process_clock_agrees_with_the_system_clock() {
        let wall = SystemSource::default().wall_ms();
        let now = now_ms();
        assert!((now - wall).abs() <= STEP_TOLERANCE_MS, "process {now} vs wall {wall}");
    }
}
