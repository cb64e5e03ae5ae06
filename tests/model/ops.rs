//! The operations a case is made of, and how they are generated per kind of run.

use idemgate::fingerprint::Fingerprint;
use idemgate::store::ABANDONED_CLAIM_RETENTION_MS;
use proptest::prelude::*;
use proptest::sample::select;

/// How many distinct records a case uses: few, so that operations keep meeting each other.
pub const SLOTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The route takes no fingerprint.
    Unmarked,
    A,
    B,
}

impl Payload {
    pub fn fingerprint(self) -> Option<Fingerprint> {
        match self {
            Payload::Unmarked => None,
            Payload::A => Some([0xa; 32]),
            Payload::B => Some([0xb; 32]),
        }
    }
}

/// Which token a completion or release is sent with.
#[derive(Debug, Clone)]
pub enum By {
    /// The record's current owner (as the pipeline does): completes unless fenced out.
    Owner,
    /// A claim issued so far in this case, counted back from the latest (modulo their number):
    /// usually not the owner but a stale or foreign one.
    Issued(usize),
    /// A token no claim ever carried.
    Stranger,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// `skew_ms`: the claim carries a clock that differs from the case's (another replica's).
    Claim {
        slot: usize,
        payload: Payload,
        lease_ms: i64,
        skew_ms: i64,
    },
    Complete {
        slot: usize,
        by: By,
        status: u16,
        body_len: usize,
        ttl_ms: i64,
    },
    Release {
        slot: usize,
        by: By,
    },
    Get {
        slot: usize,
    },
    Delete {
        slot: usize,
    },
    Sweep {
        batch: usize,
        skew_ms: i64,
    },
    /// Time passes for everyone.
    Advance {
        ms: i64,
    },
    /// The process is killed and started again: the backend is opened anew, the cache starts empty.
    Reopen,
}

/// What a kind of run may generate.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub leases: &'static [i64],
    pub ttls: &'static [i64],
    /// Whether time may pass: not where the backend ends leases and ttls by its own clock.
    pub advances: bool,
    /// Clock differences of the callers; only 0 where one process' clock must stay monotonic.
    pub skews: &'static [i64],
}

/// Half-second steps, so that leases and ttls (whole seconds) often end exactly at "now", and
/// the jumps that reach the abandoned-claim retention, also exactly.
const SECOND_STEPS: &[i64] = &[0, 1, 499, 500, 1_000, 1_500, 2_000, 3_000];

impl Profile {
    /// The backend is a pure function of the times it is given: time passes, callers' clocks differ.
    pub const TIMED: Profile = Profile {
        leases: &[1_000, 3_000],
        ttls: &[1_000, 4_000],
        advances: true,
        skews: &[0, 0, 0, -3_000, -1_000, 500, 1_000, 3_000],
    };
    /// One process through its cache: its clock only moves forward.
    pub const TIMED_MONOTONIC: Profile = Profile { skews: &[0], ..Profile::TIMED };
    /// Redis ends leases and ttls by its own clock: nothing ends within a case, whatever the
    /// callers' clocks say.
    pub const TIMELESS: Profile = Profile {
        leases: &[60_000, 120_000],
        ttls: &[60_000, 600_000],
        advances: false,
        skews: &[0, 0, -1_000, 1_000],
    };
    pub const TIMELESS_MONOTONIC: Profile = Profile { skews: &[0], ..Profile::TIMELESS };
}

fn by() -> impl Strategy<Value = By> {
    prop_oneof![6 => Just(By::Owner), 2 => (0..4usize).prop_map(By::Issued), 1 => Just(By::Stranger)]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![Just(Payload::Unmarked), Just(Payload::A), Just(Payload::B)]
}

fn advance() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => select(SECOND_STEPS),
        1 => Just(ABANDONED_CLAIM_RETENTION_MS - 500),
        1 => Just(ABANDONED_CLAIM_RETENTION_MS),
        2 => Just(ABANDONED_CLAIM_RETENTION_MS + 3_000),
    ]
}

pub fn op(p: Profile) -> BoxedStrategy<Op> {
    // Mostly the first record, so that operations meet; the others keep being checked apart.
    let slot = || prop_oneof![2 => Just(0), 1 => 1..SLOTS];
    let claim = (slot(), payload(), select(p.leases), select(p.skews))
        .prop_map(|(slot, payload, lease_ms, skew_ms)| Op::Claim { slot, payload, lease_ms, skew_ms });
    let complete = (slot(), by(), select(&[200u16, 201, 204][..]), 0..3usize, select(p.ttls))
        .prop_map(|(slot, by, status, body_len, ttl_ms)| Op::Complete { slot, by, status, body_len, ttl_ms });
    let release = (slot(), by()).prop_map(|(slot, by)| Op::Release { slot, by });
    let sweep =
        (select(&[1usize, 1, 2, 1000][..]), select(p.skews)).prop_map(|(batch, skew_ms)| Op::Sweep { batch, skew_ms });
    let mut ops = vec![
        (6, claim.boxed()),
        (4, complete.boxed()),
        (2, release.boxed()),
        (1, slot().prop_map(|slot| Op::Get { slot }).boxed()),
        (1, slot().prop_map(|slot| Op::Delete { slot }).boxed()),
        (2, sweep.boxed()),
        (1, Just(Op::Reopen).boxed()),
    ];
    if p.advances {
        ops.push((4, advance().prop_map(|ms| Op::Advance { ms }).boxed()));
    }
    proptest::strategy::Union::new_weighted(ops).boxed()
}

/// A case: up to `max_ops` operations, run in order.
pub fn case(p: Profile, max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(p), 1..=max_ops)
}

/// What every case ends with, after its own operations have been checked: every record claimed
/// again once all leases and ttls have ended (where time passes), two of them completed, one of
/// those replayed and one still in flight claimed again, then everything left to end and swept,
/// in a batch of one first, then the rest, the abandoned claims exactly at the end of their
/// retention. So every case checks expiry, takeover, replay and the sweep's boundaries on
/// whatever it left behind. Where time does not pass, the claims meet what the case left, and a
/// sweep must find nothing.
pub fn epilogue(p: Profile) -> Vec<Op> {
    let longest = *p.leases.iter().chain(p.ttls).max().unwrap();
    let claim = |slot| Op::Claim { slot, payload: Payload::Unmarked, lease_ms: p.leases[0], skew_ms: 0 };
    let complete = |slot| Op::Complete { slot, by: By::Owner, status: 200, body_len: 1, ttl_ms: p.ttls[0] };
    let mut ops = vec![];
    if p.advances {
        ops.push(Op::Advance { ms: longest });
    }
    ops.extend((0..SLOTS).map(claim));
    ops.extend([complete(0), complete(1), claim(0), claim(2)]);
    if p.advances {
        // The completed records are past their ttl; the abandoned claims are 1 ms short of the
        // retention past their lease, and reach it exactly at the last sweep.
        ops.extend([
            Op::Advance { ms: ABANDONED_CLAIM_RETENTION_MS + p.leases[0] - 1 },
            Op::Sweep { batch: 1, skew_ms: 0 },
            Op::Advance { ms: 1 },
        ]);
    }
    ops.push(Op::Sweep { batch: 1000, skew_ms: 0 });
    ops
}
