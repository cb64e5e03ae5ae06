//! The two child processes: the example receiver and idemgate. Both bind port 0 and say which
//! port they got on stdout; a child left behind by an error is killed when it is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a child may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long idemgate may take to stop after SIGTERM (its config's `shutdown_grace` is 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The binaries, by default where cargo puts them: the receiver beside this example
/// (`target/<profile>/examples/`), idemgate one level up (`target/<profile>/`).
pub fn locate(idemgate: Option<PathBuf>, receiver: Option<PathBuf>) -> Result<(PathBuf, PathBuf), String> {
    let here = std::env::current_exe().map_err(|e| format!("cannot find this program's own path: {e}"))?;
    let examples = here.parent().unwrap_or(Path::new("."));
    let idemgate = idemgate.unwrap_or_else(|| examples.join("..").join("idemgate"));
    let receiver = receiver.unwrap_or_else(|| examples.join("receiver"));
    for (what, path) in [("idemgate", &idemgate), ("the receiver", &receiver)] {
        if !path.is_file() {
            return Err(format!(
                "{what} is not at {} (build both first: cargo build --bins --examples; or name it with --{})",
                path.display(),
                if what == "idemgate" { "idemgate" } else { "receiver" }
            ));
        }
    }
    Ok((idemgate, receiver))
}

pub struct Receiver {
    _child: Child,
    pub url: String,
}

impl Receiver {
    /// Starts the receiver on a free port. With `echo`, its lines (one per delivery) are printed.
    pub async fn start(bin: &Path, echo: bool) -> Result<Receiver, String> {
        let mut command = Command::new(bin);
        command.arg("127.0.0.1:0");
        let (child, mut lines) = spawn(command, "the receiver")?;
        let first = next_line(&mut lines, "the receiver").await?;
        let url = first
            .strip_prefix("receiver listening on ")
            .ok_or_else(|| format!("the receiver said {first:?} instead of where it listens"))?
            .to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    println!("    app| {line}");
                }
            }
        });
        Ok(Receiver { _child: child, url })
    }
}

/// How to start idemgate, as often as the demo needs: the same binary, config and environment.
pub struct Launcher {
    pub bin: PathBuf,
    pub config: PathBuf,
    /// Set for idemgate; nothing else of the caller's `IDEMGATE_*` or `RUST_LOG` reaches it, as
    /// that would override the demo's config.
    pub env: Vec<(&'static str, String)>,
}

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Launcher {
    /// `idemgate serve --config FILE`, once it listens.
    pub async fn start(&self) -> Result<Proxy, String> {
        let mut command = Command::new(&self.bin);
        command.arg("serve").arg("--config").arg(&self.config).env_remove("RUST_LOG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("IDEMGATE_") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let (child, mut lines) = spawn(command, "idemgate")?;
        loop {
            let line = next_line(&mut lines, "idemgate").await?;
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if log["message"] != "listening" {
                continue;
            }
            let addr = |field: &str| {
                log[field].as_str().and_then(|a| a.parse().ok()).ok_or_else(|| format!("idemgate logged no {field}"))
            };
            let (addr, admin) = (addr("listen")?, addr("admin")?);
            // One log line per request: read and dropped, so that idemgate never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Proxy { child, addr, admin });
        }
    }
}

impl Proxy {
    /// SIGTERM, then the exit status once idemgate has drained and closed its store.
    pub async fn stop(mut self) -> Result<ExitStatus, String> {
        let pid = self.child.id().ok_or("idemgate already exited")?;
        let status = Command::new("kill").args(["-s", "TERM", &pid.to_string()]).status().await;
        if !status.is_ok_and(|s| s.success()) {
            return Err(format!("kill -s TERM {pid} failed"));
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.map_err(|e| format!("waiting for idemgate: {e}")),
            Err(_) => Err(format!("idemgate did not exit within {STOP_TIMEOUT:?} of SIGTERM")),
        }
    }
}

fn spawn(mut command: Command, what: &str) -> Result<(Child, Lines<BufReader<ChildStdout>>), String> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().ok_or_else(|| format!("no stdout from {what}"))?;
    Ok((child, BufReader::new(stdout).lines()))
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> Result<String, String> {
    match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => Ok(line),
        Ok(Ok(None)) => Err(format!("{what} exited before it listened (its errors are above)")),
        Ok(Err(e)) => Err(format!("reading {what}'s output: {e}")),
        Err(_) => Err(format!("{what} did not listen within {START_TIMEOUT:?}")),
    }
}
