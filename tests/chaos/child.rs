//! The real `idemgate` binary as a child process, with both its outputs read: stdout for the
//! "listening" line and the warnings the checks count, stderr for panics.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// What every incarnation of the child printed that the checks care about.
#[derive(Debug, Default)]
pub struct Log {
    /// "the claim was lost before completion": a completion refused after a lease takeover.
    pub lost_claims: usize,
    /// Lines on stderr (idemgate logs to stdout; stderr is for panics and aborts).
    pub stderr: Vec<String>,
    /// Log lines at ERROR level.
    pub errors: Vec<String>,
    /// Async routes: deliveries whose record was refused because their lease had ended, and
    /// records that failed. Either way the event is delivered again without a crash.
    pub lapsed_deliveries: usize,
}

pub struct Idemgate {
    child: Child,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl Idemgate {
    /// Starts `idemgate serve --config FILE` and waits for its "listening" line. With
    /// `ignore_sigxfsz`, SIGXFSZ is ignored in the child (for a file-size limit set later).
    pub fn spawn(config: &Path, log: &Arc<Mutex<Log>>, ignore_sigxfsz: bool) -> Idemgate {
        let binary = env!("CARGO_BIN_EXE_idemgate");
        let mut command = if ignore_sigxfsz {
            // An ignored signal stays ignored across exec; the pid stays the same.
            let mut sh = Command::new("sh");
            sh.args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\"", binary]);
            sh
        } else {
            Command::new(binary)
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn idemgate");
        let (tx, rx) = mpsc::channel();
        read_lines(child.stdout.take().unwrap(), log.clone(), false, Some(tx));
        read_lines(child.stderr.take().unwrap(), log.clone(), true, None);
        let (proxy_addr, admin_addr) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "idemgate did not report listening within 20 s ({status:?}); stderr: {:?}",
                    log.lock().unwrap().stderr
                );
            }
        };
        Idemgate { child, proxy_addr, admin_addr }
    }

    /// The exit status, if the process has ended (by itself: the harness has not killed it yet).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// SIGKILL: nothing is flushed or drained.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status once the drain is done.
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        crate::common::child::wait_exit(&mut self.child, limit)
    }
}

impl Drop for Idemgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's and the admin listener's addresses, from the "listening" line.
type Listening = mpsc::Sender<(SocketAddr, SocketAddr)>;

fn read_lines(pipe: impl Read + Send + 'static, log: Arc<Mutex<Log>>, stderr: bool, mut listening: Option<Listening>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            if stderr {
                log.stderr.push(line);
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening"
                && let Some(tx) = listening.take()
            {
                let addr = |field: &str| v[field].as_str().and_then(|a| a.parse().ok()).expect("the listening line");
                let _ = tx.send((addr("listen"), addr("admin")));
            }
            if line.contains("the claim was lost before completion") {
                log.lost_claims += 1;
            }
            if line.contains("the delivery's lease ended before it finished")
                || line.contains("recording the delivery failed")
            {
                log.lapsed_deliveries += 1;
            }
            if v["level"] == "ERROR" {
                log.errors.push(line);
            }
        }
    });
}
