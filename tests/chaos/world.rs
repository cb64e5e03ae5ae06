//! Everything a chaos run acts on: the idemgate child, the app, the small disk, and the journal
//! of what was done to them and when.

use super::child::{Idemgate, Log};
use super::disk::Disk;
use crate::stream::app::App;
use crate::stream::drive::Target;
use crate::stream::record::Clock;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The faults done so far, on the run's clock.
#[derive(Debug, Default, Clone)]
pub struct Journal {
    pub kills: usize,
    /// When each SIGKILL was sent.
    pub kills_at: Vec<f64>,
    /// Kills while a request was held inside the app (between forward and commit).
    pub kills_mid_request: usize,
    /// Kills of a stopped process after the app had answered what it held (async profile).
    pub kills_after_answer: usize,
    pub stops: usize,
    pub app_kills: usize,
    /// When the app was killed.
    pub app_kills_at: Vec<f64>,
    /// (held from, released at) of each external write lock on the database.
    pub locks: Vec<(f64, f64)>,
    pub disk_full: Vec<(f64, f64)>,
    /// `PRAGMA integrity_check` after each kill and at the end: (when, result).
    pub integrity: Vec<(String, String)>,
    pub restarts: usize,
    /// Exits that no fault caused, found before a kill or the final stop.
    pub unexpected_exits: Vec<String>,
}

pub struct World {
    pub app: App,
    pub disk: Disk,
    pub config: PathBuf,
    pub db: PathBuf,
    pub log: Arc<Mutex<Log>>,
    pub target: Target,
    pub clock: Clock,
    pub lease: Duration,
    proxy: Mutex<Option<Idemgate>>,
    pub journal: Mutex<Journal>,
}

impl World {
    pub fn new(app: App, disk: Disk, config: PathBuf, clock: Clock, lease: Duration) -> World {
        let db = disk.dir().join("idemgate.db");
        let log = Arc::default();
        let proxy = Idemgate::spawn(&config, &log, disk.needs_sigxfsz_ignored());
        let target = Target::new(proxy.proxy_addr);
        World {
            app,
            disk,
            config,
            db,
            log,
            target,
            clock,
            lease,
            proxy: Mutex::new(Some(proxy)),
            journal: Mutex::default(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proxy.lock().unwrap().as_ref().expect("idemgate runs").pid()
    }

    /// Where the running child's admin listener is (a restart moves it).
    pub fn admin(&self) -> std::net::SocketAddr {
        self.proxy.lock().unwrap().as_ref().expect("idemgate runs").admin_addr
    }

    pub fn signal(&self, signal: &str) {
        self.proxy.lock().unwrap().as_ref().expect("idemgate runs").signal(signal);
    }

    /// SIGKILL, then `PRAGMA integrity_check` on the file it left.
    pub fn kill(&self) {
        let (proxy, exited) = self.take("before SIGKILL");
        let at = self.clock.ms();
        if exited.is_none() {
            proxy.kill();
        }
        let mut journal = self.journal.lock().unwrap();
        journal.kills += 1;
        journal.kills_at.push(at);
        drop(journal);
        self.integrity_check("after SIGKILL, before the restart");
    }

    /// A new process on the same file; the providers send to it from now on.
    pub fn start(&self) {
        let proxy = Idemgate::spawn(&self.config, &self.log, self.disk.needs_sigxfsz_ignored());
        self.target.set(proxy.proxy_addr);
        *self.proxy.lock().unwrap() = Some(proxy);
        self.journal.lock().unwrap().restarts += 1;
    }

    /// SIGTERM: the graceful stop, and its exit status.
    pub fn stop(&self) -> std::process::ExitStatus {
        match self.take("before the final SIGTERM") {
            (_, Some(status)) => status,
            (proxy, None) => proxy.terminate(Duration::from_secs(30)),
        }
    }

    /// The child, and its exit status if it had exited on its own (noted in the journal).
    fn take(&self, when: &str) -> (Idemgate, Option<std::process::ExitStatus>) {
        let mut proxy = self.proxy.lock().unwrap().take().expect("idemgate runs");
        let exited = proxy.exited();
        if let Some(status) = exited {
            self.journal.lock().unwrap().unexpected_exits.push(format!("{when}: idemgate had exited with {status}"));
        }
        (proxy, exited)
    }

    pub fn integrity_check(&self, when: &str) {
        let conn = rusqlite::Connection::open(&self.db).expect("open the database for integrity_check");
        let mut rows = conn.prepare("PRAGMA integrity_check").unwrap();
        let result: Vec<String> = rows.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        self.journal.lock().unwrap().integrity.push((when.to_string(), result.join("; ")));
    }
}
