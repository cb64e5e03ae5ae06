//! The faults, and their seeded schedule. One fault at a time, each undone before the next.

use super::world::World;
use crate::stream::rng::Rng;
use std::sync::Arc;
use std::time::Duration;

/// idemgate's SQLite busy timeout (`src/store/sqlite/mod.rs`): a lock held longer is a 503.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fault waits for a request to reach the app, to strike while one is inside.
const ARRIVAL_WAIT: Duration = Duration::from_secs(3);
/// How long a fault waits for the app to answer what it held (its slowest answer is 0.9 s).
const ANSWER_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL at a random moment, then a restart on the same file.
    Kill,
    /// SIGKILL while a request is held inside the app: between forward and commit.
    KillMidRequest,
    /// SIGSTOP while a request is inside the app, for longer than the lease, then SIGCONT.
    Stop,
    /// SIGSTOP while a request is inside the app, the app answers, then SIGKILL: an answer
    /// idemgate never read, so never recorded.
    KillAfterAnswer,
    /// The app drops its listener and connections while requests are inside, then comes back.
    AppKill,
    /// Another process holds the database's write lock past idemgate's busy timeout.
    Lock,
    /// The disk the database lives on is full for a while.
    DiskFull,
}

/// Every kind of fault: the sync profiles draw from all of them.
pub const ALL: [Fault; 6] =
    [Fault::Kill, Fault::KillMidRequest, Fault::Stop, Fault::AppKill, Fault::Lock, Fault::DiskFull];
/// The async profile's: crashes of idemgate and of the app. Locks and a full disk are left to
/// the sync profiles, which judge what the store refuses.
pub const CRASHES: [Fault; 4] = [Fault::Kill, Fault::KillMidRequest, Fault::KillAfterAnswer, Fault::AppKill];

/// When each fault starts (milliseconds on the run's clock), within `[5%, 85%]` of the run.
/// `count` faults: every one of `kinds` once, then kinds drawn at random (kills twice as likely).
pub fn schedule(seed: u64, duration_ms: u64, count: usize, kinds: &[Fault]) -> Vec<(u64, Fault)> {
    let mut rng = Rng::new(seed ^ 0xfa017);
    let mut faults: Vec<Fault> = kinds.to_vec();
    let kills = kinds.iter().filter(|k| matches!(k, Fault::Kill | Fault::KillMidRequest | Fault::KillAfterAnswer));
    let weighted: Vec<Fault> = kinds.iter().chain(kills).copied().collect();
    while faults.len() < count {
        faults.push(*rng.pick(&weighted));
    }
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let (from, to) = (duration_ms / 20, duration_ms * 85 / 100);
    let mut times: Vec<u64> = (0..faults.len()).map(|_| rng.range(from, to)).collect();
    times.sort_unstable();
    times.into_iter().zip(faults).collect()
}

/// Runs the schedule: each fault at its time, or as soon as the one before it is undone.
pub async fn run(world: Arc<World>, plan: Vec<(u64, Fault)>, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xd0e);
    for (at, fault) in plan {
        tokio::time::sleep_until(world.clock.at(at as f64)).await;
        match fault {
            Fault::Kill => {
                blocking(&world, World::kill).await;
                blocking(&world, World::start).await;
            }
            Fault::KillMidRequest => kill_mid_request(&world).await,
            Fault::Stop => stop_past_lease(&world).await,
            Fault::KillAfterAnswer => kill_after_answer(&world).await,
            Fault::AppKill => app_kill(&world, Duration::from_millis(rng.range(300, 1500))).await,
            Fault::Lock => lock(&world).await,
            Fault::DiskFull => disk_full(&world, Duration::from_millis(rng.range(2000, 4000))).await,
        }
    }
}

async fn blocking(world: &Arc<World>, f: impl FnOnce(&World) + Send + 'static) {
    let world = world.clone();
    tokio::task::spawn_blocking(move || f(&world)).await.expect("a fault panicked");
}

/// Holds the app until a request arrives (or a while passes), so the fault finds one inside.
async fn with_request_inside(world: &World) -> bool {
    world.app.hold(true);
    world.app.arrival_after(world.app.arrivals(), ARRIVAL_WAIT).await
}

async fn kill_mid_request(world: &Arc<World>) {
    let inside = with_request_inside(world).await;
    blocking(world, World::kill).await;
    // The held requests answer into the connections of a dead process: their keys were
    // forwarded, and nothing was committed.
    world.app.hold(false);
    blocking(world, World::start).await;
    if inside {
        world.journal.lock().unwrap().kills_mid_request += 1;
    }
}

async fn kill_after_answer(world: &Arc<World>) {
    let inside = with_request_inside(world).await;
    world.signal("STOP");
    // The app answers into the sockets of a stopped process; nothing new arrives meanwhile.
    world.app.hold(false);
    let answered = world.app.idle(ANSWER_WAIT).await;
    blocking(world, World::kill).await;
    blocking(world, World::start).await;
    if inside && answered {
        world.journal.lock().unwrap().kills_after_answer += 1;
    }
}

async fn stop_past_lease(world: &Arc<World>) {
    with_request_inside(world).await;
    world.signal("STOP");
    // The app answers while idemgate is stopped; it reads the answer after its lease has ended.
    world.app.hold(false);
    tokio::time::sleep(world.lease + Duration::from_millis(500)).await;
    world.signal("CONT");
    world.journal.lock().unwrap().stops += 1;
}

async fn app_kill(world: &Arc<World>, down: Duration) {
    with_request_inside(world).await;
    world.journal.lock().unwrap().app_kills_at.push(world.clock.ms());
    world.app.kill();
    world.app.hold(false);
    tokio::time::sleep(down).await;
    world.app.revive().await;
    world.journal.lock().unwrap().app_kills += 1;
}

async fn lock(world: &Arc<World>) {
    let clock = world.clock;
    let db = world.db.clone();
    let window = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let from = clock.ms();
        std::thread::sleep(BUSY_TIMEOUT + Duration::from_millis(1500));
        let to = clock.ms();
        conn.execute_batch("COMMIT").unwrap();
        (from, to)
    })
    .await
    .expect("the lock fault panicked");
    world.journal.lock().unwrap().locks.push(window);
}

async fn disk_full(world: &Arc<World>, full_for: Duration) {
    let pid = world.pid();
    let from = world.clock.ms();
    world.disk.fill(pid);
    tokio::time::sleep(full_for).await;
    world.disk.free(pid);
    world.journal.lock().unwrap().disk_full.push((from, world.clock.ms()));
}
