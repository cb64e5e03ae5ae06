//! The command line and the config: `check`, exit codes, messages that name the field, env overrides.

use std::process::{Command, Output};

fn idemgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run idemgate")
}

fn check_yaml(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = idemgate(&["check", "--config", file.to_str().unwrap()], env);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap(), text)
}

const VALID: &str = "upstream: { url: http://127.0.0.1:3000 }
routes:
  - name: a
    match: { path: /a }
    key: { header: Idempotency-Key }
";

#[test]
fn the_shipped_config_is_valid_and_check_prints_its_routes() {
    let out = idemgate(&["check", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config/idemgate.yaml")], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for route in ["github: path /webhooks/github", "stripe: path_prefix /webhooks/stripe", "twilio:", "api:"] {
        assert!(text.contains(route), "{route} missing from:\n{text}");
    }
}

#[test]
fn invalid_configs_exit_2_naming_the_field() {
    let cases = [
        ("upstream: { url: http://x:1 }\nlisten: 127.0.0.1:8080\nbogus: 1\n", "unknown field `bogus`"),
        ("upstream: { url: http://x:1 }\nbogus: 1\n", "line 2"),
        ("routes: []\n", "upstream.url: is required"),
        ("upstream: { url: ftp://x }\n", "upstream.url"),
        ("upstream: { url: http://x:1/path }\n", "upstream.url"),
        ("upstream: { url: http://x:1 }\ndefaults: { ttl: 7 fortnights }\n", "invalid duration"),
        // The field's name and its place in the file, both.
        ("upstream: { url: http://x:1 }\ndefaults: { ttl: 7 fortnights }\n", "defaults.ttl"),
        ("upstream: { url: http://x:1 }\ndefaults: { ttl: 7 fortnights }\n", "line 2"),
        ("upstream: { url: http://x:1 }\nstore: { cache: { max_bytes: 12XB } }\n", "invalid size"),
        ("upstream: { url: http://x:1 }\nserver: { max_connections: 0 }\n", "server.max_connections"),
        ("upstream: { url: http://x:1 }\nserver: { body_read_timeout: 0s }\n", "server.body_read_timeout"),
        (
            "upstream: { url: http://x:1, timeout: 60s }\nroutes:\n  - { name: a, match: { path: /a }, key: { header: K } }\n",
            "lease: 1m must be longer than upstream.timeout",
        ),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a }, key: { header: K } }\n  - { name: a, match: { path: /b }, key: { header: K } }\n",
            "routes[1].name: duplicate route name",
        ),
        ("upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a } }\n", "key: is required"),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a, path_prefix: /b }, key: { header: K } }\n",
            "exactly one of path or path_prefix",
        ),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: //a }, key: { header: K } }\n",
            "not in normal form",
        ),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a }, key: { json: id } }\n",
            "json: \"id\" is not a JSON pointer",
        ),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a }, key: { header: K }, store_status: [7xx] }\n",
            "store_status",
        ),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a, methods: [\"P T\"] }, key: { header: K } }\n",
            "match.methods",
        ),
        ("upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a }, key: { heder: K } }\n", "line 3"),
        (
            "upstream: { url: http://x:1 }\nroutes:\n  - { name: a, match: { path: /a }, key: { all: [ { header: K } ] } }\n",
            "all: needs at least two sources",
        ),
        ("upstream: { url: http://x:1 }\ndefaults: { concurrent: maybe }\n", "maybe"),
        ("upstream: { url: http://x:1 }\nadmin: { listen: 0.0.0.0:9090 }\n", "admin.listen"),
    ];
    for (yaml, expected) in cases {
        let (code, text) = check_yaml(yaml, &[]);
        assert_eq!(code, 2, "{yaml}\n{text}");
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}\nfor:\n{yaml}");
    }
}

#[test]
fn environment_variables_override_the_file() {
    let (code, text) =
        check_yaml(VALID, &[("IDEMGATE_UPSTREAM__URL", "http://127.0.0.1:4000"), ("IDEMGATE_DEFAULTS__TTL", "3d")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("upstream http://127.0.0.1:4000"), "{text}");
    assert!(text.contains("ttl 3days"), "{text}");
    let (code, text) = check_yaml(VALID, &[("IDEMGATE_UPSTREAM__TIMEOUT", "soon")]);
    assert_eq!(code, 2);
    assert!(text.contains("upstream.timeout"), "{text}");
    let (code, text) = check_yaml(VALID, &[("IDEMGATE_UPSTREAM__BOGUS", "1")]);
    assert_eq!(code, 2);
    assert!(text.contains("bogus"), "{text}");
}

/// A required field may come from the environment alone: a database URL with its password is kept
/// out of the file (a Kubernetes Secret in an env var).
#[test]
fn a_required_field_may_come_from_the_environment_alone() {
    let yaml = VALID.replace("upstream:", "store: { postgres: { pool_size: 4 } }\nupstream:");
    assert_ne!(yaml, VALID);
    let (code, text) = check_yaml(&yaml, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("url") && text.contains("line "), "the file's own fault, with its place: {text}");
    let (code, text) = check_yaml(&yaml, &[("IDEMGATE_STORE__POSTGRES__URL", "postgres://u:secret@db:5432/idemgate")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("store postgres") && !text.contains("secret"), "{text}");
}

/// Kubernetes sets `IDEMGATE_SERVICE_HOST`, `IDEMGATE_PORT_8080_TCP`, ... in every pod of a
/// namespace with a Service named `idemgate`; they are not config, and must not stop a start.
#[test]
fn kubernetes_service_link_variables_are_not_config() {
    let links = [
        ("IDEMGATE_SERVICE_HOST", "10.0.0.7"),
        ("IDEMGATE_SERVICE_PORT", "8080"),
        ("IDEMGATE_SERVICE_PORT_HTTP", "8080"),
        ("IDEMGATE_PORT", "tcp://10.0.0.7:8080"),
        ("IDEMGATE_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
        ("IDEMGATE_PORT_8080_TCP_ADDR", "10.0.0.7"),
    ];
    let (code, text) = check_yaml(VALID, &links);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn idemgate_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, VALID).unwrap();
    let out = idemgate(&["check"], &[("IDEMGATE_CONFIG", file.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = idemgate(&["check", "--config", "/nonexistent/idemgate.yaml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/idemgate.yaml"));
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "routes: []\n").unwrap();
    let out = idemgate(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.url"));
}
