//! The real `idemgate` binary as a child process, for crash and signal tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Writes a config for a child proxy into `dir`: ports 0, the SQLite file beside it, logs at info
/// (the harness reads the "listening" line); `body` as for [`super::config_yaml`].
pub fn write_config(dir: &Path, upstream: &str, body: &str) -> std::path::PathBuf {
    let file = dir.join("idemgate.yaml");
    let yaml = super::config_yaml(upstream, &dir.join("idemgate.db"), body).replace("level: warn", "level: info");
    std::fs::write(&file, yaml).unwrap();
    file
}

pub struct ChildProxy {
    pub child: Child,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Every log line the child printed after "listening".
    pub lines: mpsc::Receiver<String>,
}

impl ChildProxy {
    /// Starts `idemgate serve --config FILE` and waits for its "listening" log line.
    pub fn spawn(config: &Path) -> ChildProxy {
        Self::spawn_with(config, &[])
    }

    /// As [`ChildProxy::spawn`], with extra environment variables.
    pub fn spawn_with(config: &Path, env: &[(&str, &str)]) -> ChildProxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn idemgate");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!("idemgate exited before listening: {status:?} (its stderr is above)");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("idemgate did not report listening within 20s");
                }
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" {
                let proxy_addr = v["listen"].as_str().unwrap().parse().unwrap();
                let admin_addr = v["admin"].as_str().unwrap().parse().unwrap();
                return ChildProxy { child, proxy_addr, admin_addr, lines: rx };
            }
        }
    }

    /// Waits up to `limit` for the next log line whose message starts with `message`; returns it parsed.
    /// Blocks the thread: call it from a multi-threaded runtime (`block_in_place`).
    pub fn wait_for_log(&self, message: &str, limit: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {message:?} log line ({e}); the lines since: {seen:#?}"));
            seen.push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"].as_str().is_some_and(|m| m.starts_with(message)) {
                return v;
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// SIGKILL: no drain, no checkpoint, nothing flushed that was not already synced.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.child, limit)
    }
}

/// The child's exit status, polled (a child's exit is no event to await) for at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "idemgate did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
