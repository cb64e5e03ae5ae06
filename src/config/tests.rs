use super::*;

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    let config: Config = serde_saphyr::from_str(yaml).map_err(|e| ConfigError(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

#[test]
fn defaults_apply_and_routes_override_them() {
    let cfg = parse(
        "upstream: { url: http://127.0.0.1:3000 }
defaults: { ttl: 3d, concurrent: wait }
routes:
  - { name: a, match: { path: /a }, key: { header: K } }
  - { name: b, match: { path: /b }, key: { header: K }, ttl: 1h, max_body: 2KiB }
",
    )
    .unwrap();
    let a = Policy::resolve(&cfg.defaults, &cfg.routes[0]);
    let b = Policy::resolve(&cfg.defaults, &cfg.routes[1]);
    assert_eq!(a.ttl.0, Duration::from_secs(3 * 86400));
    assert_eq!(b.ttl.0, Duration::from_secs(3600));
    assert_eq!(a.concurrent, Concurrent::Wait);
    assert_eq!(b.concurrent, Concurrent::Wait);
    assert_eq!(a.max_body, Size(1 << 20), "built-in default");
    assert_eq!(b.max_body, Size(2048));
    assert_eq!(a.forward_key_header, "X-Idempotency-Key");
}

#[test]
fn every_section_has_the_contract_defaults() {
    let cfg = parse("upstream: { url: http://127.0.0.1:3000 }").unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(cfg.admin.token, None);
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert_eq!(cfg.log.level, "info");
    assert_eq!(cfg.server.header_read_timeout.0, Duration::from_secs(10));
    assert_eq!(cfg.server.body_read_timeout.0, Duration::from_secs(30));
    assert_eq!(cfg.server.max_connections, 4096);
    assert_eq!(cfg.server.shutdown_grace.0, Duration::from_secs(25));
    assert_eq!(cfg.upstream.connect_timeout.0, Duration::from_secs(1));
    assert_eq!(cfg.upstream.timeout.0, Duration::from_secs(30));
    match cfg.store.backend() {
        Backend::Sqlite(sqlite) => assert_eq!(sqlite.path, PathBuf::from("data/idemgate.db")),
        _ => panic!("SQLite is the default store"),
    }
    assert_eq!(cfg.store.cache.max_bytes, Size(64 << 20));
    assert!(cfg.routes.is_empty());
}

#[test]
fn zero_read_timeouts_are_refused_by_name() {
    for field in ["header_read_timeout", "body_read_timeout"] {
        let yaml = format!("upstream: {{ url: http://x:1 }}\nserver: {{ {field}: 0s }}\n");
        let err = parse(&yaml).unwrap_err().0;
        assert!(err.starts_with(&format!("server.{field}")), "{err}");
    }
}

#[test]
fn route_names_must_be_unique_and_plain() {
    let dup = "upstream: { url: http://x:1 }
routes:
  - { name: a, match: { path: /a }, key: { header: K } }
  - { name: a, match: { path: /b }, key: { header: K } }
";
    assert!(parse(dup).unwrap_err().0.starts_with("routes[1].name"));
    let odd = "upstream: { url: http://x:1 }\nroutes:\n  - { name: 'a b', match: { path: /a }, key: { header: K } }\n";
    assert!(parse(odd).unwrap_err().0.starts_with("routes[0].name"));
}
