//! A small disk for the database, that the harness can fill and free while idemgate runs.
//!
//! As root (where `mount -t tmpfs` works), the run's folder is a tmpfs of its own, and "full"
//! means a filler file takes every byte that is left: SQLite's next write that needs space gets
//! ENOSPC. Elsewhere, the child's RLIMIT_FSIZE is lowered to the size of its smallest database
//! file (SIGXFSZ ignored, so writes past it fail with EFBIG); freeing raises it again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const TMPFS_SIZE: &str = "64m";

pub enum Disk {
    Tmpfs { dir: PathBuf },
    Rlimit { dir: PathBuf },
}

impl Disk {
    /// A tmpfs mounted on `dir` (created), or the file-size limit when that mount is refused or
    /// `IDEMGATE_TEST_CHAOS_DISK=rlimit` asks for it.
    pub fn new(dir: &Path) -> Disk {
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.to_path_buf();
        if std::env::var("IDEMGATE_TEST_CHAOS_DISK").as_deref() == Ok("rlimit") {
            return Disk::Rlimit { dir };
        }
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted { Disk::Tmpfs { dir } } else { Disk::Rlimit { dir } }
    }

    pub fn dir(&self) -> &Path {
        match self {
            Disk::Tmpfs { dir } | Disk::Rlimit { dir } => dir,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Disk::Tmpfs { .. } => format!("a {TMPFS_SIZE} tmpfs filled to the last byte"),
            Disk::Rlimit { .. } => "RLIMIT_FSIZE on the child, at its database's size".into(),
        }
    }

    /// Whether the child must ignore SIGXFSZ (the file-size limit is the way to fill).
    pub fn needs_sigxfsz_ignored(&self) -> bool {
        matches!(self, Disk::Rlimit { .. })
    }

    /// Leaves no room for the database to grow.
    pub fn fill(&self, pid: u32) {
        match self {
            Disk::Tmpfs { dir } => {
                let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
                for chunk in [1 << 20, 4096, 1] {
                    let block = vec![0u8; chunk];
                    while filler.write_all(&block).is_ok() {}
                }
            }
            Disk::Rlimit { dir } => {
                let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
                let limit = size("idemgate.db").min(size("idemgate.db-wal"));
                prlimit(pid, &format!("{limit}:unlimited"));
            }
        }
    }

    pub fn free(&self, pid: u32) {
        match self {
            Disk::Tmpfs { dir } => std::fs::remove_file(dir.join("filler")).unwrap(),
            Disk::Rlimit { .. } => prlimit(pid, "unlimited:unlimited"),
        }
    }
}

fn prlimit(pid: u32, fsize: &str) {
    let status = Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--fsize={fsize}")]).status();
    assert!(status.is_ok_and(|s| s.success()), "prlimit --fsize={fsize} failed");
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Disk::Tmpfs { dir } = self {
            let _ = Command::new("umount").arg("-l").arg(&*dir).status();
        }
        let _ = std::fs::remove_dir_all(self.dir());
    }
}
