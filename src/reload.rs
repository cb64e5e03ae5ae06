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
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events closer together than this are one change: an editor or a ConfigMap update writes
/// several entries, and reading the file between them could see it half-written.
const SETTLE: Duration = Duration::from_millis(200);
/// A directory that never stops changing is read after this long all the same.
const MAX_SETTLE: Duration = Duration::from_secs(2);

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
        Reloader { path, started, gate, metrics, last_seen: Mutex::new(loaded) }
    }

    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        // Read once: the digest and the config are of the same bytes.
        // Held from the read to the swap: two reloads close together (a SIGHUP beside a file
        // event) apply one after the other, so the file read last is the config that serves.
        let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
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

/// Watches the config file's directory and reloads on changes. The directory, not the file: an
/// editor's save, a `mv` over the file and Kubernetes' swap of the `..data` symlink all replace
/// the file, and a watch on the old file would see none of the later changes. The watch lasts as
/// long as the returned watcher.
pub fn watch_file(reloader: Arc<Reloader>) -> notify::Result<notify::RecommendedWatcher> {
    let dir = watched_dir(&reloader.path);
    let path = reloader.path.clone();
    let (events, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| event.paths.iter().any(|changed| concerns(&path, changed))) {
            let _ = events.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Wait for the burst of events to settle before reading the file.
            let settled = tokio::time::Instant::now() + MAX_SETTLE;
            while let Ok(Some(())) =
                tokio::time::timeout_at(settled.min(tokio::time::Instant::now() + SETTLE), changes.recv()).await
            {
            }
            reloader.reload(Trigger::FileChanged);
        }
    });
    Ok(watcher)
}

/// Whether a change of `changed` (an entry of the config's directory) can change the config: the
/// file itself, or the first step of a relative symlink it is (Kubernetes' `..data`). Other files
/// in the directory, a database beside the config say, are not worth reading the config for.
fn concerns(config: &Path, changed: &Path) -> bool {
    let Some(name) = changed.file_name() else { return false };
    if config.file_name() == Some(name) {
        return true;
    }
    let link = std::fs::read_link(config).unwrap_or_default();
    link.is_relative() && link.components().next().is_some_and(|first| first.as_os_str() == name)
}

fn watched_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
