//! The watch on the config file's directory, and the task that reloads when it fires.
//!
//! The directory, not the file: an editor's save, a `mv` over the file and Kubernetes' swap of the
//! `..data` symlink all replace the file, and a watch on the old file would see none of the later
//! changes. But the directory may hold other busy files, the SQLite database and its `-wal` and
//! `-shm` above all, and a watch that woke for each of their writes would cost a thread's CPU in
//! proportion to the traffic. So on Linux the watch is an inotify watch that asks the kernel only
//! for the events that end a change of an entry: a file closed after writing, an entry created,
//! deleted or renamed into or out of the directory, its metadata changed. Not for each write
//! (`IN_MODIFY`) nor each open: a database that keeps its files open and writes to them never
//! wakes it. An editor's save ends with a close or a rename, `mv` is a rename, and the `..data`
//! swap is a rename of a symlink. Elsewhere, `notify`'s watcher, which wakes for every write, with
//! the same filter of names.
//!
//! Whatever wakes the watch, the work per event is a comparison of its name with two cached names:
//! the config file's, and the first step of the relative symlink it is (Kubernetes' `..data`). The
//! link is read again only when the config's own entry changes, the one way it can point elsewhere.

use super::{Reloader, Trigger};
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events closer together than this are one change: an editor or a ConfigMap update writes
/// several entries, and reading the file between them could see it half-written.
const SETTLE: Duration = Duration::from_millis(200);
/// A directory that never stops changing is read after this long all the same.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// The watch of [`watch_file`]: it lasts as long as this value.
pub struct Watch {
    #[cfg(target_os = "linux")]
    _watch: linux::Handle,
    #[cfg(not(target_os = "linux"))]
    _watch: notify::RecommendedWatcher,
}

/// Watches the config file's directory and reloads on changes of the file (see the module's
/// documentation for which). The watch lasts as long as the returned [`Watch`].
pub fn watch_file(reloader: Arc<Reloader>) -> std::io::Result<Watch> {
    let dir = watched_dir(&reloader.path);
    let (changes, mut changed) = mpsc::unbounded_channel();
    let sink = Sink { names: Names::new(&reloader.path), counts: reloader.watched.clone(), changes };
    #[cfg(target_os = "linux")]
    let watch = Watch { _watch: linux::start(&dir, sink)? };
    #[cfg(not(target_os = "linux"))]
    let watch = Watch { _watch: portable::start(&dir, sink)? };
    tokio::spawn(async move {
        while changed.recv().await.is_some() {
            // Wait for the burst of events to settle before reading the file.
            let settled = tokio::time::Instant::now() + MAX_SETTLE;
            while let Ok(Some(())) =
                tokio::time::timeout_at(settled.min(tokio::time::Instant::now() + SETTLE), changed.recv()).await
            {
            }
            reloader.reload(Trigger::FileChanged);
        }
    });
    Ok(watch)
}

fn watched_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What the watch has seen since it started.
#[derive(Debug, Default)]
pub(super) struct Counts {
    events: AtomicU64,
    changes: AtomicU64,
}

impl Counts {
    pub(super) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

/// The names in the config's directory whose change can change the config.
struct Names {
    config: PathBuf,
    /// The config file's own name.
    file: OsString,
    /// The first step of the relative symlink the config file is (`..data` of
    /// `idemgate.yaml -> ..data/idemgate.yaml`), if it is one.
    link_head: Option<OsString>,
}

impl Names {
    fn new(config: &Path) -> Names {
        let file = config.file_name().unwrap_or_default().to_os_string();
        Names { config: config.to_path_buf(), file, link_head: link_head(config) }
    }

    /// Whether a change of the entry `name` can change the config. Only a change of the config's
    /// own entry can make it point elsewhere, so only then is the link read again.
    fn concerns(&mut self, name: &OsStr) -> bool {
        if name == self.file {
            self.link_head = link_head(&self.config);
            return true;
        }
        self.link_head.as_deref() == Some(name)
    }

    /// Events were lost: any name may have changed.
    fn lost(&mut self) {
        self.link_head = link_head(&self.config);
    }
}

fn link_head(config: &Path) -> Option<OsString> {
    let link = std::fs::read_link(config).ok()?;
    if !link.is_relative() {
        return None;
    }
    match link.components().find(|c| *c != Component::CurDir)? {
        Component::Normal(first) => Some(first.to_os_string()),
        _ => None,
    }
}

/// Where a watch's events go: counted, filtered by name, and those that concern the config sent to
/// the reload task.
struct Sink {
    names: Names,
    counts: Arc<Counts>,
    changes: mpsc::UnboundedSender<()>,
}

impl Sink {
    /// One event about the directory entry `name`, or `None` when the watch cannot say which
    /// (events lost to an overflow, say): then the config may have changed. False once the reload
    /// task is gone.
    fn event(&mut self, name: Option<&OsStr>) -> bool {
        self.counts.events.fetch_add(1, Ordering::Relaxed);
        let concerns = match name {
            Some(name) => self.names.concerns(name),
            None => {
                self.names.lost();
                true
            }
        };
        if !concerns {
            return true;
        }
        self.counts.changes.fetch_add(1, Ordering::Relaxed);
        self.changes.send(()).is_ok()
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Sink;
    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
    use std::io::ErrorKind;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The events that end a change of an entry; not `MODIFY` (each write) nor `OPEN`, which a
    /// database in the same directory causes at the rate of its writes.
    const MASK: WatchMask = WatchMask::CLOSE_WRITE
        .union(WatchMask::MOVED_TO)
        .union(WatchMask::MOVED_FROM)
        .union(WatchMask::CREATE)
        .union(WatchMask::DELETE)
        .union(WatchMask::ATTRIB);

    /// The thread reading the watch's events: by this name in `/proc/<pid>/task/*/comm`.
    pub(super) const THREAD: &str = "config-watch";

    /// Ends the watch when dropped: the kernel answers the watch's removal with `IN_IGNORED`,
    /// which wakes the thread, and it ends.
    pub(super) struct Handle {
        watches: Watches,
        wd: WatchDescriptor,
        closing: Arc<AtomicBool>,
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            self.closing.store(true, Ordering::Relaxed);
            let _ = self.watches.remove(self.wd.clone());
        }
    }

    pub(super) fn start(dir: &Path, sink: Sink) -> std::io::Result<Handle> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let wd = watches.add(dir, MASK)?;
        let closing = Arc::new(AtomicBool::new(false));
        let dir = dir.display().to_string();
        std::thread::Builder::new().name(THREAD.to_string()).spawn({
            let closing = closing.clone();
            move || run(inotify, sink, &dir, &closing)
        })?;
        Ok(Handle { watches, wd, closing })
    }

    fn run(mut inotify: Inotify, mut sink: Sink, dir: &str, closing: &AtomicBool) {
        let mut buffer = [0u8; 4096];
        loop {
            let events = match inotify.read_events_blocking(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(%dir, error = %e, "the config watch failed; reload with SIGHUP");
                    return;
                }
            };
            for event in events {
                if event.mask.contains(EventMask::IGNORED) {
                    if !closing.load(Ordering::Relaxed) {
                        tracing::warn!(%dir, "the config directory is gone and its watch ended; reload with SIGHUP");
                    }
                    return;
                }
                // A nameless event is about the directory itself, or says events were lost.
                if !sink.event(event.name) {
                    return;
                }
            }
        }
    }
}

/// `notify`'s watcher, where there is no inotify; compiled for the tests too, so that it is built
/// and tried on Linux.
#[cfg(any(test, not(target_os = "linux")))]
mod portable {
    use super::Sink;
    use notify::{RecursiveMode, Watcher};
    use std::path::Path;

    pub(super) fn start(dir: &Path, mut sink: Sink) -> std::io::Result<notify::RecommendedWatcher> {
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.need_rescan() {
                sink.event(None);
                return;
            }
            for name in event.paths.iter().filter_map(|path| path.file_name()) {
                sink.event(Some(name));
            }
        })
        .map_err(std::io::Error::other)?;
        watcher.watch(dir, RecursiveMode::NonRecursive).map_err(std::io::Error::other)?;
        Ok(watcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const WAIT: Duration = Duration::from_secs(10);

    fn sink(config: &Path) -> (Sink, Arc<Counts>, mpsc::UnboundedReceiver<()>) {
        let (changes, changed) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        (Sink { names: Names::new(config), counts: counts.clone(), changes }, counts, changed)
    }

    /// The database's files, opened as SQLite keeps them: for the life of the store.
    fn open_database(dir: &Path) -> Vec<std::fs::File> {
        ["idemgate.db", "idemgate.db-wal", "idemgate.db-shm"]
            .iter()
            .map(|name| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap())
            .collect()
    }

    /// Writes as SQLite does: many, with a sync now and then.
    fn database_writes(files: &mut [std::fs::File]) {
        for i in 0..2000 {
            for file in files.iter_mut() {
                file.write_all(b"page").unwrap();
                if i % 100 == 0 {
                    file.sync_data().unwrap();
                }
            }
        }
    }

    async fn next_change(changed: &mut mpsc::UnboundedReceiver<()>) {
        tokio::time::timeout(WAIT, changed.recv()).await.expect("the change is seen").expect("the watch runs");
    }

    #[test]
    fn names_are_the_config_and_the_first_step_of_its_link() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::os::unix::fs::symlink("..data/idemgate.yaml", d.join("idemgate.yaml")).unwrap();
        let mut names = Names::new(&d.join("idemgate.yaml"));
        for (name, concerns) in
            [("idemgate.yaml", true), ("..data", true), ("..data_tmp", false), ("idemgate.db-wal", false)]
        {
            assert_eq!(names.concerns(OsStr::new(name)), concerns, "{name}");
        }
        // The link is replaced: the new target counts from the event about the link on.
        std::fs::remove_file(d.join("idemgate.yaml")).unwrap();
        std::os::unix::fs::symlink("./current/idemgate.yaml", d.join("idemgate.yaml")).unwrap();
        assert!(names.concerns(OsStr::new("idemgate.yaml")));
        assert!(names.concerns(OsStr::new("current")));
        assert!(!names.concerns(OsStr::new("..data")));
        // A plain file, or an absolute link: the name alone.
        std::fs::remove_file(d.join("idemgate.yaml")).unwrap();
        std::os::unix::fs::symlink("/etc/idemgate.yaml", d.join("idemgate.yaml")).unwrap();
        assert!(names.concerns(OsStr::new("idemgate.yaml")));
        assert!(!names.concerns(OsStr::new("current")) && !names.concerns(OsStr::new("etc")));
    }

    /// The database's writes never reach the watch: the one event it wakes for is the config's save.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn inotify_does_not_wake_for_writes_to_open_files_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("idemgate.yaml");
        std::fs::write(&config, "a").unwrap();
        let mut database = open_database(dir.path());
        let (sink, counts, mut changed) = sink(&config);
        let watch = linux::start(dir.path(), sink).unwrap();
        database_writes(&mut database);
        std::fs::write(&config, "b").unwrap();
        next_change(&mut changed).await;
        // Queued in order: the save's event comes after every write's.
        assert_eq!((counts.events(), counts.changes()), (1, 1), "woke only for the save");
        // A file written whole (opened, written, closed) wakes it, but is no change of the config.
        for i in 0..20 {
            std::fs::write(dir.path().join("notes.txt"), format!("{i}")).unwrap();
        }
        std::fs::rename(dir.path().join("notes.txt"), dir.path().join("moved.txt")).unwrap();
        std::fs::write(&config, "c").unwrap();
        next_change(&mut changed).await;
        assert_eq!(counts.changes(), 2, "only the saves are changes");
        // Created, closed, moved from, moved to (repeated closes may merge in the queue), the save.
        assert!(counts.events() >= 6, "the closes and the renames woke it: {counts:?}");
        // Dropping the watch ends its thread, and with it the channel.
        drop(watch);
        let end = tokio::time::timeout(WAIT, changed.recv()).await.expect("the thread ends");
        assert!(end.is_none());
        drop(database);
    }

    /// The fallback wakes for every write, but reads the config only for its own changes.
    #[tokio::test]
    async fn notify_fallback_filters_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("idemgate.yaml");
        std::fs::write(&config, "a").unwrap();
        let (sink, counts, mut changed) = sink(&config);
        let _watch = portable::start(dir.path(), sink).unwrap();
        let mut database = open_database(dir.path());
        database_writes(&mut database);
        std::fs::write(&config, "b").unwrap();
        next_change(&mut changed).await;
        let (events, changes) = (counts.events(), counts.changes());
        assert!(events > changes && changes >= 1, "woke for the database too: {counts:?}");
    }
}
