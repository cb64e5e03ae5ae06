//! The configuration: typed, parsed once, validated, then immutable.
//!
//! A YAML file (through figment's YAML provider from serde-saphyr) overlaid with `IDEMGATE_*`
//! environment variables (`__` between levels). Unknown fields are errors. [`load`] returns a
//! [`Config`] whose every invariant [`Config::validate`] has checked; each component takes its own
//! section from it.

mod units;

pub use units::{Dur, Size};

use figment::Figment;
use figment::providers::{Env, Format};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a config could not be used. The message always names the offending field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn invalid(field: impl std::fmt::Display, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{field}: {why}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// What becomes of a request that matches no route.
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub defaults: RouteOptions,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// `pass`: a request that matches no route goes to the app untouched; `reject`: it gets 404, so
/// the sidecar is the app's only door.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Pass,
    Reject,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// How request log lines show idempotency keys.
    pub keys: KeyLogging,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Json, level: "info".into(), keys: KeyLogging::Shown }
    }
}

/// `shown`: the key as received; `hashed`: the first 16 hex digits of its SHA-256 (lines of one
/// key still match each other); `hidden`: no key in logs.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyLogging {
    #[default]
    Shown,
    Hashed,
    Hidden,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub header_read_timeout: Dur,
    /// A protected route's whole request body must arrive within this, or the request gets 408.
    pub body_read_timeout: Dur,
    pub max_connections: usize,
    pub shutdown_grace: Dur,
    /// Request and response bodies held in memory at once, all requests together.
    pub max_buffered_bytes: Size,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Dur(Duration::from_secs(10)),
            body_read_timeout: Dur(Duration::from_secs(30)),
            max_connections: 4096,
            shutdown_grace: Dur(Duration::from_secs(25)),
            max_buffered_bytes: Size(64 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), token: None }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Required; kept optional here so that its absence is reported by name, not as a parse error.
    pub url: Option<String>,
    pub connect_timeout: Dur,
    pub timeout: Dur,
    /// Requests with the app at once; past it, new ones are shed (503) rather than queued.
    pub max_in_flight: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            connect_timeout: Dur(Duration::from_secs(1)),
            timeout: Dur(Duration::from_secs(30)),
            max_in_flight: 1024,
        }
    }
}

/// Where records live. One backend: SQLite (the default, one pod), or PostgreSQL or Redis shared
/// by several replicas.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub sqlite: Option<SqliteConfig>,
    pub postgres: Option<PostgresConfig>,
    pub redis: Option<RedisConfig>,
    pub cache: CacheConfig,
}

/// The backend a config selects.
pub enum Backend<'a> {
    Sqlite(std::borrow::Cow<'a, SqliteConfig>),
    Postgres(&'a PostgresConfig),
    Redis(&'a RedisConfig),
}

impl StoreConfig {
    pub fn backend(&self) -> Backend<'_> {
        match (&self.postgres, &self.redis, &self.sqlite) {
            (Some(pg), _, _) => Backend::Postgres(pg),
            (None, Some(redis), _) => Backend::Redis(redis),
            (None, None, Some(sqlite)) => Backend::Sqlite(std::borrow::Cow::Borrowed(sqlite)),
            (None, None, None) => Backend::Sqlite(std::borrow::Cow::Owned(SqliteConfig::default())),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:pass@host:port/db` (or key=value form); `env:NAME` is not read here:
    /// use `IDEMGATE_STORE__POSTGRES__URL` to keep a password out of the file.
    pub url: String,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Each store operation must finish within this, or the request gets 503.
    #[serde(default = "default_store_timeout")]
    pub timeout: Dur,
    /// Prepare each statement once per pooled connection (named, cached by the pool) and only
    /// bind and execute it afterwards, instead of sending it unnamed, parsed and planned anew,
    /// every time. Off by default: named statements are safe on a direct connection and through
    /// pgbouncer 1.21+ with `max_prepared_statements` set, but not through pgbouncer in
    /// transaction or statement mode without it (a statement prepared on one server connection
    /// is missing, or is another statement, on the next).
    #[serde(default)]
    pub prepared_statements: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://...`.
    pub url: String,
    /// Prefix of every Redis key idemgate writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// Each store operation must finish within this, or the request gets 503.
    #[serde(default = "default_store_timeout")]
    pub timeout: Dur,
    /// With a `rediss://` url: what to trust and what to present. Without it, a `rediss://` url
    /// trusts the system's roots and presents no client certificate.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
}

/// `store.redis.tls`. The server is always verified, chain and host name: there is no switch to
/// turn that off (redis-rs' `#insecure` is refused).
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM CA certificates the server's certificate must chain to; the system's roots if absent.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain), for servers that authenticate clients
    /// (`tls-auth-clients yes`); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RedisConfig {
    /// Whether the url asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("redis://") && !self.uses_tls() {
            return Err(invalid("store.redis.url", "must start with redis:// or rediss://"));
        }
        if self.uses_tls() && self.url.ends_with("#insecure") {
            return Err(invalid(
                "store.redis.url",
                "#insecure (not verifying the server) is not supported: trust a private CA with store.redis.tls.ca_file",
            ));
        }
        let Some(tls) = &self.tls else { return Ok(()) };
        if !self.uses_tls() {
            return Err(invalid(
                "store.redis.tls",
                "needs a rediss:// url: with redis:// the connection is plain text",
            ));
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => Err(invalid("store.redis.tls.key_file", "is required with cert_file")),
            (None, Some(_)) => Err(invalid("store.redis.tls.cert_file", "is required with key_file")),
            _ => Ok(()),
        }
    }
}

fn default_pool_size() -> usize {
    16
}

fn default_store_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}

fn default_redis_prefix() -> String {
    "idemgate:".to_string()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("data/idemgate.db") }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub max_bytes: Size,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_bytes: Size(64 << 20) }
    }
}

/// One place a key (or a scope) can come from. In YAML: `{ header: X-GitHub-Delivery }`,
/// `{ json: /id }`, `{ query: idempotency_key }`, `{ form: MessageSid }`, `{ all: [...] }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum KeySource {
    Header(String),
    Json(String),
    Query(String),
    Form(String),
    All(Vec<KeySpec>),
}

/// A single source, or a list tried in order until one yields a key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "a key source ({header|json|query|form|all: ...}) or a list of them")]
pub enum KeySpec {
    One(KeySource),
    FirstOf(Vec<KeySpec>),
}

/// A route's `scope`: where the namespace of its keys comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "none, or a key source ({header|json|query|form|all: ...}) or a list of them")]
pub enum ScopeSpec {
    /// `scope: none`: every client shares one namespace, on purpose.
    Shared(NoneWord),
    From(KeySpec),
}

/// A route's `stale` guard: written out, or `preset` for the preset's suggested sources.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, expecting = "`preset`, or { entity: <key source>, version: <key source>, action: ack | flag }")]
pub enum StaleSpec {
    Preset(PresetWord),
    Guard(StaleConfig),
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaleConfig {
    /// Which thing the event is about (a customer id, an order id).
    pub entity: KeySpec,
    /// The event's order for that thing: an integer, an RFC 3339 timestamp or an HTTP date.
    pub version: KeySpec,
    #[serde(default)]
    pub action: StaleAction,
}

/// What a stale delivery gets.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StaleAction {
    /// 200 with `Idempotent-Stale: true`, and the app is not called.
    #[default]
    Ack,
    /// Forwarded with `X-Idempotency-Stale: true`, for the app to decide.
    Flag,
}

/// The word `preset`, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetWord;

impl<'de> Deserialize<'de> for PresetWord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "preset" => Ok(PresetWord),
            other => Err(serde::de::Error::custom(format!("expected `preset` or a guard, found {other:?}"))),
        }
    }
}

/// The word `none`, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoneWord;

impl<'de> Deserialize<'de> for NoneWord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "none" => Ok(NoneWord),
            other => Err(serde::de::Error::custom(format!("expected none, not {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FingerprintSpec {
    None,
    Body,
    Json(Vec<String>),
}

/// `delivery:` on a route (or in `defaults:`, replaced whole by a route's own).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(default)]
    pub mode: DeliveryMode,
    /// What the sender gets once the event is stored durably.
    #[serde(default = "DeliveryConfig::default_ack_status")]
    pub ack_status: u16,
    /// Deliveries to the app before the event becomes a dead letter.
    #[serde(default = "DeliveryConfig::default_attempts")]
    pub attempts: u32,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// An event not delivered within this (from its acknowledgement) becomes a dead letter.
    #[serde(default = "DeliveryConfig::default_max_age")]
    pub max_age: Dur,
    /// Calls to the app at once for this route.
    #[serde(default = "DeliveryConfig::default_concurrency")]
    pub concurrency: usize,
    /// Events with the same value are delivered one at a time, in arrival order.
    pub order_by: Option<KeySpec>,
    /// Events waiting or being delivered at most; beyond it new events get 503.
    #[serde(default = "DeliveryConfig::default_queue_limit")]
    pub queue_limit: u64,
}

impl DeliveryConfig {
    fn default_ack_status() -> u16 {
        202
    }
    fn default_attempts() -> u32 {
        10
    }
    fn default_max_age() -> Dur {
        Dur(Duration::from_secs(3 * 24 * 3600))
    }
    fn default_concurrency() -> usize {
        4
    }
    fn default_queue_limit() -> u64 {
        100_000
    }

    pub fn is_async(&self) -> bool {
        self.mode == DeliveryMode::Async
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            mode: DeliveryMode::Sync,
            ack_status: Self::default_ack_status(),
            attempts: Self::default_attempts(),
            backoff: BackoffConfig::default(),
            max_age: Self::default_max_age(),
            concurrency: Self::default_concurrency(),
            order_by: None,
            queue_limit: Self::default_queue_limit(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// The sender waits for the app's answer (today's behaviour).
    #[default]
    Sync,
    /// Acknowledged once stored; delivered to the app by a worker, with retries.
    Async,
}

/// Exponential with full jitter: after the n-th failed attempt, a uniformly random wait in
/// `[0, min(max, initial * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(default = "BackoffConfig::default_initial")]
    pub initial: Dur,
    #[serde(default = "BackoffConfig::default_max")]
    pub max: Dur,
}

impl BackoffConfig {
    fn default_initial() -> Dur {
        Dur(Duration::from_secs(1))
    }
    fn default_max() -> Dur {
        Dur(Duration::from_secs(600))
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial: Self::default_initial(), max: Self::default_max() }
    }
}

/// Whether a route enforces idempotency, or only shows what enforcing would do.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    Enforce,
    /// Every request goes to the app as it arrived; keys are still claimed and completed, and
    /// `idemgate_shadow_total{would}` counts what enforcing would have done.
    Shadow,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Concurrent {
    Reject,
    Wait,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MissingKey {
    Reject,
    Forward,
}

/// One entry of `store_status`: a code (`409`) or a class (`2xx`), written as text or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPattern(pub String);

impl std::str::FromStr for StatusPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(StatusPattern(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::parse_text_or_int(d)
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Compare the path's ASCII case too (by default `/Webhooks/GitHub` is `/webhooks/github`).
    #[serde(default)]
    pub case_sensitive: bool,
}

/// Declares the per-route policy fields once: `RouteOptions` (all optional, used for `defaults:`),
/// the same fields on `RouteConfig`, and the resolved `Policy` with the built-in defaults.
macro_rules! policy_fields {
    ($($(#[$doc:meta])* $field:ident : $ty:ty = $default:expr;)*) => {
        #[derive(Debug, Clone, Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub struct RouteOptions { $(pub $field: Option<$ty>,)* }

        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RouteConfig {
            pub name: String,
            #[serde(rename = "match")]
            pub matcher: MatchConfig,
            /// A provider's key, scope, ttl and signature scheme; any field set beside it wins.
            pub preset: Option<crate::preset::Preset>,
            pub key: Option<KeySpec>,
            /// Absent: scoped by the request's credentials; `none`: one namespace for everyone.
            pub scope: Option<ScopeSpec>,
            /// Signature verification, checked before anything is claimed.
            pub verify: Option<crate::verify::VerifyConfig>,
            /// The stale-event guard: never apply an older version of an entity after a newer one.
            pub stale: Option<StaleSpec>,
            $(pub $field: Option<$ty>,)*
        }

        /// A route's policy after `defaults:` and the built-in defaults are applied.
        #[derive(Debug, Clone)]
        pub struct Policy { $($(#[$doc])* pub $field: $ty,)* }

        impl Policy {
            pub fn resolve(defaults: &RouteOptions, route: &RouteConfig) -> Policy {
                Policy { $($field: route.$field.clone()
                    .or_else(|| defaults.$field.clone())
                    .unwrap_or_else(|| $default),)* }
            }
        }
    };
}

policy_fields! {
    /// How long a completed key is remembered.
    ttl: Dur = Dur(Duration::from_secs(7 * 24 * 3600));
    /// How long an unfinished claim blocks duplicates.
    lease: Dur = Dur(Duration::from_secs(60));
    concurrent: Concurrent = Concurrent::Reject;
    wait_timeout: Dur = Dur(Duration::from_secs(10));
    store_status: Vec<StatusPattern> = vec![StatusPattern("2xx".to_string())];
    max_body: Size = Size(1 << 20);
    max_response_body: Size = Size(1 << 20);
    max_key_length: usize = 255;
    missing_key: MissingKey = MissingKey::Reject;
    fingerprint: FingerprintSpec = FingerprintSpec::None;
    forward_key_header: String = "X-Idempotency-Key".to_string();
    /// `enforce`, or `shadow`: forward everything, count what enforcing would do.
    mode: RouteMode = RouteMode::Enforce;
    /// `sync`, or `async`: acknowledge once stored, deliver to the app with retries.
    delivery: DeliveryConfig = DeliveryConfig::default();
}

/// Reads the file, overlays the environment, and validates the result.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse(path, &read(path)?)
}

/// The config file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: cannot read config file: {e}", path.display())))
}

/// As [`load`], for the file's `text` already read (`path` names it in messages).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = Figment::from(serde_saphyr::figment::Yaml::string(text))
        .merge(env_overrides())
        .merge(env_secrets())
        .extract()
        .map_err(|e| {
            // The figment pass (file and environment) names the field but loses positions;
            // serde-saphyr reports the line and column of what it rejects in the file itself, so
            // where the file alone is at fault, say both. The file alone may also lack what the
            // environment supplies (a database URL with its password, say), which is why it is
            // not checked first.
            match serde_saphyr::from_str_with_options::<Config>(text, serde_saphyr::options! { with_snippet: false }) {
                Err(in_file) => match field_of(&e) {
                    Some(field) => ConfigError(format!("{}: {field}: {in_file}", path.display())),
                    None => ConfigError(format!("{}: {in_file}", path.display())),
                },
                Ok(_) => ConfigError(describe_figment_error(e)),
            }
        })?;
    config.validate()?;
    Ok(config)
}

/// A config for an embedded [`crate::IdempotencyLayer`]: the YAML alone (the embedding program
/// owns its environment), without `upstream` (the wrapped service is the app).
pub fn parse_embedded(text: &str) -> Result<Config, ConfigError> {
    let config: Config = serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
        .map_err(|e| ConfigError(e.to_string()))?;
    config.validate_gate()?;
    Ok(config)
}

/// `IDEMGATE_UPSTREAM__URL=...` sets `upstream.url`. Not config: `IDEMGATE_CONFIG` (names the
/// file), the test suite's `IDEMGATE_TEST_*`, and the variables Kubernetes sets for a Service named
/// `idemgate` in the same namespace (`IDEMGATE_SERVICE_HOST`, `IDEMGATE_PORT_8080_TCP`, ...), which
/// would otherwise stop the pod from starting as unknown fields.
fn env_overrides() -> Env {
    Env::prefixed("IDEMGATE_")
        .filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            let service_link = k.starts_with("service_") || k == "port" || k.starts_with("port_");
            let secret = SECRET_FIELDS.iter().any(|(var, _)| var.eq_ignore_ascii_case(&k));
            k != "config" && !k.starts_with("test_") && !service_link && !secret
        })
        .split("__")
}

/// Secrets set from the environment, each as the (suffix of the) variable and the field it sets.
const SECRET_FIELDS: [(&str, &str); 1] = [("admin__token", "admin.token")];

/// Secrets are strings exactly as written: figment's environment provider reads `1234567890` as a
/// number (which a string field then refuses, quoting it in the error) and `0012345` as 12345.
fn env_secrets() -> Figment {
    SECRET_FIELDS.iter().fold(Figment::new(), |figment, (var, field)| {
        match std::env::var(format!("IDEMGATE_{}", var.to_ascii_uppercase())) {
            Ok(value) => figment.merge(figment::providers::Serialized::default(field, value)),
            Err(_) => figment,
        }
    })
}

/// The field a figment error is about, as the rest of the messages write it: `routes[0].ttl`.
fn field_of(e: &figment::Error) -> Option<String> {
    let mut field = String::new();
    for step in &e.path {
        match step.parse::<usize>() {
            Ok(index) => field.push_str(&format!("[{index}]")),
            Err(_) if field.is_empty() => field.push_str(step),
            Err(_) => field.push_str(&format!(".{step}")),
        }
    }
    (!field.is_empty()).then_some(field)
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let field = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
            let kind = e.kind.to_string();
            match (field.is_empty(), source.is_empty()) {
                (true, _) => kind,
                (false, true) => format!("{field}: {kind}"),
                (false, false) => format!("{field}: {kind} (from {source})"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Checks everything serde cannot: cross-field rules, required fields, value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_upstream()?;
        self.validate_gate()
    }

    /// Everything but the upstream: what an embedded [`crate::IdempotencyLayer`] needs.
    fn validate_gate(&self) -> Result<(), ConfigError> {
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.body_read_timeout.0.is_zero() {
            return Err(invalid("server.body_read_timeout", "must be longer than 0s"));
        }
        if self.server.header_read_timeout.0.is_zero() {
            return Err(invalid("server.header_read_timeout", "must be longer than 0s"));
        }
        if self.admin.token.as_deref() == Some("") {
            return Err(invalid("admin.token", "must not be empty (omit it to disable)"));
        }
        if self.admin.token.is_none() && !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin.listen",
                format!("{} is not a loopback address: set admin.token, or listen on 127.0.0.1", self.admin.listen),
            ));
        }
        self.validate_store()?;
        let mut names = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}] ({})", route.name);
            if route.name.is_empty() || !route.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(invalid(format!("routes[{i}].name"), "must be non-empty letters, digits, '-', '_' or '.'"));
            }
            if !names.insert(route.name.as_str()) {
                return Err(invalid(format!("routes[{i}].name"), format!("duplicate route name {:?}", route.name)));
            }
            let compiled = crate::route::Route::compile(route, &self.defaults, self.upstream.timeout)
                .map_err(|e| invalid(at, e))?;
            if compiled.policy.delivery.is_async() && matches!(self.store.backend(), Backend::Redis(_)) {
                return Err(invalid(
                    format!("routes[{i}].delivery.mode"),
                    "async needs a store that keeps a queue: sqlite or postgres (the redis store does not)",
                ));
            }
            // Such a route's largest deliveries could never be buffered: 503 for them forever.
            if compiled.policy.max_body > self.server.max_buffered_bytes {
                return Err(invalid(
                    "server.max_buffered_bytes",
                    format!(
                        "{} is less than routes[{i}] ({})'s max_body ({})",
                        self.server.max_buffered_bytes, route.name, compiled.policy.max_body
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let store = &self.store;
        let chosen = [store.sqlite.is_some(), store.postgres.is_some(), store.redis.is_some()];
        if chosen.iter().filter(|c| **c).count() > 1 {
            return Err(invalid("store", "choose one of sqlite, postgres and redis"));
        }
        match store.backend() {
            Backend::Sqlite(sqlite) if sqlite.path.as_os_str().is_empty() => {
                Err(invalid("store.sqlite.path", "must not be empty"))
            }
            Backend::Postgres(pg) if pg.url.is_empty() => Err(invalid("store.postgres.url", "must not be empty")),
            Backend::Postgres(pg) if pg.pool_size == 0 => {
                Err(invalid("store.postgres.pool_size", "must be at least 1"))
            }
            Backend::Postgres(pg) => {
                crate::store::PostgresTls::of_url(&pg.url).map_err(|e| invalid("store.postgres.url", e))?;
                Ok(())
            }
            Backend::Redis(redis) => redis.validate(),
            Backend::Sqlite(_) => Ok(()),
        }
    }

    fn validate_upstream(&self) -> Result<(), ConfigError> {
        let url =
            self.upstream.url.as_deref().ok_or_else(|| {
                invalid("upstream.url", "is required (the app's address, e.g. http://127.0.0.1:3000)")
            })?;
        let uri: http::Uri = url.parse().map_err(|e| invalid("upstream.url", format!("{url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(invalid("upstream.url", format!("{url:?} must be http://host:port")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("upstream.url", "must not have a path or query; requests keep their own"));
        }
        if self.upstream.timeout.0.is_zero() {
            return Err(invalid("upstream.timeout", "must be greater than 0"));
        }
        if self.upstream.max_in_flight == 0 {
            return Err(invalid("upstream.max_in_flight", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
