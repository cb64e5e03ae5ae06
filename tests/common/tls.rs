//! TLS fixtures: a CA made by the test (rcgen), and a real PostgreSQL and Redis serving TLS with
//! its certificates on free ports of 127.0.0.1. Each server is a child process in a temp dir of
//! its own, stopped when its guard drops. A server binary that is missing, or built without TLS,
//! fails the test with its own words: nothing is skipped.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A CA and what it signed, as PEM files in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for `server_names` (DNS names or IP addresses), and a client
    /// certificate whose common name is `client_name` (PostgreSQL's `cert` auth maps it to a role).
    pub fn new(dir: &Path, server_names: &[&str], client_name: &str) -> Pki {
        let (ca_pem, issuer) = new_ca("idemgate test CA");
        let (server_pem, server_key) =
            leaf(&issuer, server_names, server_names[0], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_pem, client_key) = leaf(&issuer, &[], client_name, ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key),
        }
    }
}

/// A CA certificate (PEM) that signed nothing the servers present: trusting it alone must fail.
pub fn unrelated_ca(dir: &Path) -> PathBuf {
    let path = dir.join("unrelated-ca.pem");
    std::fs::write(&path, new_ca("an unrelated CA").0).unwrap();
    path
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate signed by `issuer` and its PKCS#8 key, both PEM.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A port nobody listens on now (the kernel's pick for port 0, released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `log` (the server's output) until it holds `ready`; panics with the log if the child
/// exits first or nothing comes within [`READY_WITHIN`].
fn wait_ready(child: &mut Child, log: &Path, ready: &str, what: &str) {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(ready) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}) before it was ready; its output:\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} was not ready within {READY_WITHIN:?}; its output:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = std::fs::File::create(path).unwrap();
    (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
}

/// PostgreSQL serving TLS only: `pg_hba.conf` has `hostssl` lines alone (plus the Unix socket), so
/// a plain TCP connection is refused. The role `postgres` logs in with [`TlsPostgres::PASSWORD`]
/// (SCRAM), the role `certuser` by its client certificate (`cert`: chain to the CA, CN = role).
pub struct TlsPostgres {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl TlsPostgres {
    pub const PASSWORD: &str = "pg-Secret-4711";
    pub const CERT_USER: &str = "certuser";

    /// Starts a fresh cluster; `pki` names the server certificate and the CA of client certificates.
    pub fn start(pki: &Pki) -> TlsPostgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (uid, gid) = postgres_user();
        // The server reads its files as `postgres`, from a dir it owns; the key must be 0600.
        let copy = |from: &Path, name: &str| {
            let to = dir.path().join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
            to
        };
        let (cert, key, ca) =
            (copy(&pki.server_cert, "server.pem"), copy(&pki.server_key, "server.key"), copy(&pki.ca, "ca.pem"));
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let as_postgres = |program: &str| {
            let mut command = Command::new(bin.join(program));
            command.uid(uid).gid(gid).current_dir(dir.path()).env("LC_ALL", "C");
            command
        };
        run(as_postgres("initdb").args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "-D"]).arg(&data));
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\nhostssl all {} 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
                Self::CERT_USER
            ),
        )
        .unwrap();
        single_user(
            as_postgres("postgres"),
            &data,
            &format!(
                "ALTER ROLE postgres PASSWORD '{}';\nCREATE ROLE {} LOGIN SUPERUSER;\n",
                Self::PASSWORD,
                Self::CERT_USER
            ),
        );
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let (out, err) = log_file(&log);
        let mut child = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .arg("-c")
            .arg(format!("ssl_ca_file={}", ca.display()))
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn postgres");
        wait_ready(&mut child, &log, "database system is ready to accept connections", "postgres");
        TlsPostgres { port, child, dir }
    }

    /// A url for the role `postgres` with its password, and these query parameters.
    pub fn url(&self, params: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/postgres?{params}", Self::PASSWORD, self.port)
    }
}

impl Drop for TlsPostgres {
    /// A fast shutdown (SIGINT), so that the server removes its shared memory and socket; SIGKILL
    /// if it does not end within 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest `/usr/lib/postgresql/*/bin` (Debian's server binaries).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    versions.pop().expect(
        "the TLS tests need PostgreSQL's server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin: \
         apt-get install postgresql",
    )
}

/// The uid and gid of the `postgres` OS user: PostgreSQL refuses to run as root.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("no OS user `postgres` (the postgresql package creates it); PostgreSQL refuses to run as root");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sql` (one statement a line) in single-user mode, before the server starts.
fn single_user(mut postgres: Command, data: &Path, sql: &str) {
    use std::io::Write;
    let mut child = postgres
        .args(["--single", "-D"])
        .arg(data)
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postgres --single");
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "postgres --single: {text}");
}

/// Redis serving TLS only (`--port 0`), with a password, `requirepass` [`TlsRedis::PASSWORD`].
pub struct TlsRedis {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl TlsRedis {
    pub const PASSWORD: &str = "redis-Secret-0815";

    /// `auth_clients`: `no`, `optional` or `yes` (whether a client certificate is required).
    pub fn start(pki: &Pki, auth_clients: &str) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("redis.log");
        let (out, err) = log_file(&log);
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args(["--tls-auth-clients", auth_clients, "--requirepass", Self::PASSWORD])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("the TLS tests need redis-server (apt-get install redis-server)");
        wait_ready(&mut child, &log, "Ready to accept connections", "redis-server (with TLS)");
        TlsRedis { port, child, dir }
    }

    pub fn url(&self) -> String {
        format!("rediss://:{}@127.0.0.1:{}/0", Self::PASSWORD, self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
