//! The shared stores over TLS, against a real PostgreSQL and Redis that each test starts with a CA
//! of its own making: the server is verified whenever TLS is required, a refused certificate
//! fails the start with a message that names the store and never the password, and client
//! certificates authenticate.

mod common;
#[path = "common/tls.rs"]
mod tls_servers;

use common::{HEADER_ROUTE, TestApp, TestProxy, config_yaml};
use std::path::Path;
use tls_servers::{Pki, TlsPostgres, TlsRedis, unrelated_ca};

const BOTH_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// The proxy's config body for a store section of one backend with these fields (YAML).
fn store(backend: &str, fields: &str) -> String {
    format!("store:\n  {backend}:\n{fields}{HEADER_ROUTE}")
}

fn postgres_store(url: &str) -> String {
    store("postgres", &format!("    url: \"{url}\"\n    timeout: 5s\n"))
}

fn redis_store(url: &str, tls: &str) -> String {
    store("redis", &format!("    url: \"{url}\"\n    timeout: 5s\n{tls}"))
}

/// Starts the proxy in front of `app` and proves the store works: a delivery reaches the app
/// once, its duplicate is replayed from the store.
async fn forwards_once_and_replays(app: &TestApp, body: &str) {
    let proxy = TestProxy::start(app, body).await;
    let key = [("Idempotency-Key", "tls-1")];
    let first = proxy.post("/hooks/a", &key, "{}").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let second = proxy.post("/hooks/a", &key, "{}").await;
    assert_eq!(second.status, 200);
    assert!(second.replayed(), "the duplicate was not replayed");
    assert_eq!(app.count("tls-1"), 1);
    proxy.stop().await;
}

/// Why the proxy did not start with this config body; panics if it did.
async fn start_error(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idemgate.yaml");
    std::fs::write(&file, config_yaml("http://127.0.0.1:9", &dir.path().join("db"), body)).unwrap();
    let config = idemgate::config::load(&file).unwrap_or_else(|e| panic!("config invalid: {e}"));
    match idemgate::server::start(config).await {
        Ok(_) => panic!("the proxy started, but should not have"),
        Err(e) => e.to_string(),
    }
}

fn assert_names_store_not_password(message: &str, store: &str, password: &str) {
    assert!(message.starts_with("cannot open the store"), "{message}");
    assert!(message.contains(store), "the store is not named: {message}");
    assert!(!message.contains(password), "the password leaked: {message}");
}

fn ca_param(ca: &Path) -> String {
    format!("sslrootcert={}", ca.display())
}

#[tokio::test]
async fn postgres_verify_full_with_the_right_ca_forwards_once_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "nobody");
    let pg = TlsPostgres::start(&pki);
    let app = TestApp::start().await;
    let url = pg.url(&format!("sslmode=verify-full&{}", ca_param(&pki.ca)));
    forwards_once_and_replays(&app, &postgres_store(&url)).await;
}

/// `require` verifies as `verify-full` does (stricter than libpq, which would not verify).
#[tokio::test]
async fn postgres_with_a_wrong_ca_fails_the_start_naming_the_store_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "nobody");
    let wrong = unrelated_ca(dir.path());
    let pg = TlsPostgres::start(&pki);
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = pg.url(&format!("sslmode={mode}&{}", ca_param(&wrong)));
        let message = start_error(&postgres_store(&url)).await;
        assert_names_store_not_password(&message, "PostgreSQL", TlsPostgres::PASSWORD);
        assert!(message.contains("certificate") && message.contains("UnknownIssuer"), "{mode}: {message}");
        assert!(message.contains(&format!("sslmode={mode}")), "{mode}: what was checked is not said: {message}");
    }
}

#[tokio::test]
async fn postgres_verify_full_refuses_a_certificate_for_another_host_and_verify_ca_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), &["otherhost"], "nobody");
    let pg = TlsPostgres::start(&pki);
    let message = start_error(&postgres_store(&pg.url(&format!("sslmode=verify-full&{}", ca_param(&pki.ca))))).await;
    assert_names_store_not_password(&message, "PostgreSQL", TlsPostgres::PASSWORD);
    assert!(message.contains("certificate not valid for name \"127.0.0.1\""), "{message}");

    let app = TestApp::start().await;
    let url = pg.url(&format!("sslmode=verify-ca&{}", ca_param(&pki.ca)));
    forwards_once_and_replays(&app, &postgres_store(&url)).await;
}

/// `prefer` (the default) encrypts without verifying: it reaches a `hostssl`-only server whose
/// CA it was never told of.
#[tokio::test]
async fn postgres_prefer_encrypts_without_verifying_and_disable_is_refused_by_a_tls_only_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "nobody");
    let pg = TlsPostgres::start(&pki);
    let app = TestApp::start().await;
    forwards_once_and_replays(&app, &postgres_store(&pg.url("sslmode=prefer"))).await;

    let message = start_error(&postgres_store(&pg.url("sslmode=disable"))).await;
    assert_names_store_not_password(&message, "PostgreSQL", TlsPostgres::PASSWORD);
    assert!(message.contains("no encryption"), "{message}");
}

#[tokio::test]
async fn postgres_client_certificate_authenticates_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, TlsPostgres::CERT_USER);
    let pg = TlsPostgres::start(&pki);
    let base = format!(
        "postgres://{}@127.0.0.1:{}/postgres?sslmode=verify-full&{}",
        TlsPostgres::CERT_USER,
        pg.port,
        ca_param(&pki.ca)
    );
    let message = start_error(&postgres_store(&base)).await;
    assert!(message.contains("certificate"), "without a client certificate: {message}");

    let app = TestApp::start().await;
    let url = format!("{base}&sslcert={}&sslkey={}", pki.client_cert.display(), pki.client_key.display());
    forwards_once_and_replays(&app, &postgres_store(&url)).await;
}

#[tokio::test]
async fn redis_rediss_with_the_ca_file_forwards_once_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "nobody");
    let redis = TlsRedis::start(&pki, "no");
    let app = TestApp::start().await;
    let tls = format!("    tls: {{ ca_file: {} }}\n", pki.ca.display());
    forwards_once_and_replays(&app, &redis_store(&redis.url(), &tls)).await;
}

#[tokio::test]
async fn redis_with_a_wrong_ca_or_host_fails_the_start_naming_the_store_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "nobody");
    let redis = TlsRedis::start(&pki, "no");
    let wrong = format!("    tls: {{ ca_file: {} }}\n", unrelated_ca(dir.path()).display());
    let message = start_error(&redis_store(&redis.url(), &wrong)).await;
    assert_names_store_not_password(&message, "redis", TlsRedis::PASSWORD);
    assert!(message.contains("tls, ca: ") && message.contains("UnknownIssuer"), "{message}");

    let elsewhere = tempfile::tempdir().unwrap();
    let other = Pki::new(elsewhere.path(), &["otherhost"], "nobody");
    let redis_elsewhere = TlsRedis::start(&other, "no");
    let tls = format!("    tls: {{ ca_file: {} }}\n", other.ca.display());
    let message = start_error(&redis_store(&redis_elsewhere.url(), &tls)).await;
    assert_names_store_not_password(&message, "redis", TlsRedis::PASSWORD);
    assert!(message.contains("certificate not valid for name \"127.0.0.1\""), "{message}");
}

#[tokio::test]
async fn redis_presents_the_client_certificate_when_the_server_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "idemgate");
    let redis = TlsRedis::start(&pki, "yes");
    let ca_only = format!("    tls: {{ ca_file: {} }}\n", pki.ca.display());
    let message = start_error(&redis_store(&redis.url(), &ca_only)).await;
    assert_names_store_not_password(&message, "redis", TlsRedis::PASSWORD);

    let app = TestApp::start().await;
    let tls = format!(
        "    tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    forwards_once_and_replays(&app, &redis_store(&redis.url(), &tls)).await;
}

/// `idemgate check --config FILE`: its exit code and everything it printed.
fn check(body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idemgate.yaml");
    std::fs::write(&file, config_yaml("http://127.0.0.1:3000", &dir.path().join("db"), body)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn check_shows_the_tls_mode_of_the_store_and_never_the_password() {
    let cases = [
        (
            postgres_store("postgres://u:pw-123@db:5432/x?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            "store postgres (url not shown; tls: verify-full, ca: /etc/ca.pem)",
        ),
        (
            postgres_store("postgres://u:pw-123@db:5432/x?sslmode=verify-ca&sslcert=/c.pem&sslkey=/k.pem"),
            "store postgres (url not shown; tls: verify-ca, system roots, client cert: /c.pem)",
        ),
        (postgres_store("postgres://u:pw-123@db:5432/x?sslmode=disable"), "tls: off (sslmode=disable)"),
        (postgres_store("postgres://u:pw-123@db:5432/x"), "tls: prefer, server not verified"),
        (
            redis_store("rediss://:pw-123@cache:6380/0", "    tls: { ca_file: /etc/ca.pem }\n"),
            "store redis (url not shown; tls, ca: /etc/ca.pem)",
        ),
        (redis_store("rediss://:pw-123@cache:6380/0", ""), "store redis (url not shown; tls, system roots)"),
        (redis_store("redis://:pw-123@cache:6379/0", ""), "store redis (url not shown; no tls)"),
    ];
    for (body, want) in cases {
        let (code, text) = check(&body);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(want), "{want:?} not in:\n{text}");
        assert!(!text.contains("pw-123"), "the password leaked:\n{text}");
    }
}

#[test]
fn useless_or_unsafe_tls_settings_are_config_errors_naming_the_field() {
    let cases = [
        (redis_store("redis://cache:6379/0", "    tls: { ca_file: /etc/ca.pem }\n"), "store.redis.tls"),
        (redis_store("rediss://cache:6380/0#insecure", ""), "store.redis.url"),
        (redis_store("rediss://cache:6380/0", "    tls: { cert_file: /c.pem }\n"), "store.redis.tls.key_file"),
        (postgres_store("postgres://u:pw-123@db/x?sslmode=allow"), "store.postgres.url: sslmode=\"allow\""),
        (postgres_store("postgres://u:pw-123@db/x?sslrootcert=/ca.pem"), "store.postgres.url: sslrootcert"),
        (postgres_store("postgres://u:pw-123@db/x?sslmode=require&sslkey=/k.pem"), "sslcert and sslkey go together"),
    ];
    for (body, want) in cases {
        let (code, text) = check(&body);
        assert_eq!(code, 2, "{text}");
        assert!(text.contains(want), "{want:?} not in:\n{text}");
        assert!(!text.contains("pw-123"), "the password leaked:\n{text}");
    }
}

/// The real binary, started on a store whose certificate it refuses: it exits 1, and neither its
/// log nor anything else it prints carries the password.
#[test]
fn a_refused_store_certificate_stops_the_binary_without_logging_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), BOTH_NAMES, "nobody");
    let pg = TlsPostgres::start(&pki);
    let url = pg.url(&format!("sslmode=verify-full&{}", ca_param(&unrelated_ca(dir.path()))));
    let file = dir.path().join("idemgate.yaml");
    std::fs::write(&file, config_yaml("http://127.0.0.1:9", &dir.path().join("db"), &postgres_store(&url))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot start") && text.contains("UnknownIssuer"), "{text}");
    assert!(!text.contains(TlsPostgres::PASSWORD), "the password leaked:\n{text}");
}
