//! Live config reload: on SIGHUP, or when the config file changes (edited, replaced, or the
//! directory symlink above it swapped, as Kubernetes updates a mounted ConfigMap), the file is
//! loaded and validated exactly as at start, and its routes replace the running ones.
//!
//! Requests in flight finish on the routes they started with; connections are untouched. An
//! invalid config is refused, logged and counted, and the running one stays. Only the routes and
//! `defaults` change live: the other sections (listen addresses, admin, server limits, upstream,
//! store, log) are bound to sockets, pools and files opened at start, so a change there is
//! reported as needing a restart on every reload until the process restarts.

use crate::config::{self, Config, ConfigError};
use crate::gate::Gate;
use crate::metrics::{Metrics, ReloadLabel, ReloadResult};
use crate::route::Router;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

mod watch;
pub use watch::{Watch, watch_file};

/// What asked for the reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always reloads, since secret files named by `verify` may have changed.
    Signal,
    /// A change in the config file's directory: reloads only if the file's bytes changed.
    FileChanged,
}

#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new routes serve; `restart_needed` lists the changed sections that do not change live.
    Applied {
        routes: usize,
        restart_needed: Vec<&'static str>,
    },
    /// The file is as it was when last loaded.
    Unchanged,
    Refused(ConfigError),
}

pub struct Reloader {
    path: PathBuf,
    /// The config the process started with: what the sections that cannot change live are.
    started: Config,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    /// The digest of the file as last loaded (applied or refused), so that an event that did not
    /// change it is no reload, and a refused file is not refused again on every event.
    last_seen: Mutex<Option<[u8; 32]>>,
    /// What the file watch has seen, for tests and benchmarks: see [`Reloader::events_seen`].
    watched: Arc<watch::Counts>,
}

impl Reloader {
    /// `loaded` is the [`digest`] of the text `started` was parsed from.
    pub fn new(
        path: PathBuf,
        started: Config,
        loaded: Option<[u8; 32]>,
        gate: Arc<Gate>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader { path, started, gate, metrics, last_seen: Mutex::new(loaded), watched: Arc::default() }
    }

    /// Filesystem events the watch of [`watch_file`] has been handed, each a comparison of one
    /// name. On Linux, writes to files kept open beside the config (the database and its WAL) are
    /// none of them: the watch does not wake for them.
    pub fn events_seen(&self) -> u64 {
        self.watched.events()
    }

    /// Of [`Reloader::events_seen`], those about the config file or the symlink it is reached
    /// through: each of these (after the burst settles) reads the file.
    pub fn changes_seen(&self) -> u64 {
        self.watched.changes()
    }

    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        // Read once: the digest and the config are of the same bytes.
        // Held from the read to the swap: two reloads close together (a SIGHUP beside a file
        // event) apply one after the other, so the file read last is the config that serves.
        let mut last = crate::lock(&self.last_seen);
        let text = config::read(&self.path);
        let digest = text.as_deref().ok().map(digest);
        if trigger == Trigger::FileChanged && digest.is_some() && *last == digest {
            return ReloadOutcome::Unchanged;
        }
        *last = digest;
        let outcome = match text.and_then(|text| self.load(&text)) {
            Ok((config, router)) => {
                let routes = router.routes().len();
                self.gate.swap_routes(router);
                ReloadOutcome::Applied { routes, restart_needed: restart_needed(&self.started, &config) }
            }
            Err(e) => ReloadOutcome::Refused(e),
        };
        self.report(trigger, &outcome);
        drop(last);
        outcome
    }

    fn load(&self, text: &str) -> Result<(Config, Router), ConfigError> {
        let config = config::parse(&self.path, text)?;
        let router = Router::from_config(&config).map_err(ConfigError)?;
        Ok((config, router))
    }

    fn report(&self, trigger: Trigger, outcome: &ReloadOutcome) {
        let path = self.path.display().to_string();
        let result = match outcome {
            ReloadOutcome::Unchanged => return,
            ReloadOutcome::Applied { routes, restart_needed } if restart_needed.is_empty() => {
                tracing::info!(%path, ?trigger, routes, "config reloaded");
                ReloadResult::applied
            }
            ReloadOutcome::Applied { routes, restart_needed } => {
                let restart_needed = restart_needed.join(", ");
                tracing::warn!(%path, ?trigger, routes, %restart_needed, "config reloaded; changes to these sections take effect only after a restart");
                ReloadResult::applied
            }
            ReloadOutcome::Refused(e) => {
                tracing::error!(%path, ?trigger, error = %e, "config reload refused; the running config stays");
                ReloadResult::refused
            }
        };
        self.metrics.config_reloads.get_or_create(&ReloadLabel { result }).inc();
    }
}

/// The config text's SHA-256: what tells a change of the file from an event that changed nothing.
pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The sections that differ from the running process's and cannot change without a restart.
fn restart_needed(started: &Config, new: &Config) -> Vec<&'static str> {
    let changed = [
        ("listen", started.listen != new.listen),
        ("log", started.log != new.log),
        ("server", started.server != new.server),
        ("admin", started.admin != new.admin),
        ("upstream", started.upstream != new.upstream),
        ("store", started.store != new.store),
    ];
    changed.into_iter().filter(|(_, differs)| *differs).map(|(name, _)| name).collect()
}
