//! The `idemgate` command: `serve` runs the proxy, `check` validates a config.

use clap::{Parser, Subcommand};
use idemgate::config;
use idemgate::reload::{self, Reloader, Trigger};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "idemgate", version, about = "An idempotency sidecar for webhook receivers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The YAML config file.
        #[arg(long, env = "IDEMGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config and print the resolved routes.
    Check {
        #[arg(long, env = "IDEMGATE_CONFIG")]
        config: PathBuf,
    },
    /// Exit 0 if the proxy of this config answers `GET /healthz` on its admin listener, else 1.
    /// For container health checks in images without curl.
    Health {
        #[arg(long, env = "IDEMGATE_CONFIG")]
        config: PathBuf,
    },
    /// Dead letters of an async route, through the admin listener of this config's proxy.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetters,
    },
}

#[derive(Subcommand)]
enum DeadLetters {
    /// Print the route's dead letters as JSON, oldest first.
    List {
        #[arg(long, env = "IDEMGATE_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        route: String,
    },
    /// Queue a dead letter again, with fresh attempts.
    Retry(DeadLetter),
    /// Forget a dead letter and its key: the provider's next redelivery is queued anew.
    Purge(DeadLetter),
}

#[derive(clap::Args)]
struct DeadLetter {
    #[arg(long, env = "IDEMGATE_CONFIG")]
    config: PathBuf,
    #[arg(long)]
    route: String,
    #[arg(long)]
    key: String,
    /// The scope value, on a route with `scope`.
    #[arg(long)]
    scope: Option<String>,
}

/// An invalid config (or command line) exits 2; a failure at run time exits 1.
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => serve(&config),
        Command::Health { config } => health(&config),
        Command::DeadLetters { action } => dead_letters(action),
    }
}

fn dead_letters(action: DeadLetters) -> ExitCode {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    let (config, method, path) = match &action {
        DeadLetters::List { config, route } => (config, "GET", format!("/admin/dead-letters?route={}", enc(route))),
        DeadLetters::Retry(d) | DeadLetters::Purge(d) => {
            let scope = d.scope.as_deref().map(|s| format!("?scope={}", enc(s))).unwrap_or_default();
            let (method, suffix) =
                if matches!(action, DeadLetters::Retry(_)) { ("POST", "/retry") } else { ("DELETE", "") };
            (&d.config, method, format!("/admin/dead-letters/{}/{}{suffix}{scope}", enc(&d.route), enc(&d.key)))
        }
    };
    let cfg = match config::load(config) {
        Ok(cfg) => cfg,
        Err(e) => return invalid(&e),
    };
    let timeout = std::time::Duration::from_secs(10);
    match idemgate::admin::call(cfg.admin.listen, method, &path, cfg.admin.token.as_deref(), timeout) {
        Ok((status, body)) if (200..300).contains(&status) => {
            match action {
                DeadLetters::List { .. } => println!("{body}"),
                DeadLetters::Retry(d) => println!("queued again: {} on route {}", d.key, d.route),
                DeadLetters::Purge(d) => println!("forgotten: {} on route {}", d.key, d.route),
            }
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("{method} {path}: {status} {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("the admin listener could not be reached: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("unhealthy: invalid config: {e}");
            return ExitCode::FAILURE;
        }
    };
    match idemgate::admin::probe(cfg.admin.listen, std::time::Duration::from_secs(2)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return invalid(&e),
    };
    println!("config {} is valid", path.display());
    println!(
        "listen {}, admin {}, upstream {}",
        cfg.listen,
        cfg.admin.listen,
        cfg.upstream.url.as_deref().unwrap_or("-")
    );
    let store = match cfg.store.backend() {
        config::Backend::Sqlite(sqlite) => format!("sqlite {}", sqlite.path.display()),
        config::Backend::Postgres(pg) => match idemgate::store::PostgresTls::of_url(&pg.url) {
            Ok(tls) => format!("postgres (url not shown; {})", tls.describe()),
            Err(e) => return invalid(&config::ConfigError(format!("store.postgres.url: {e}"))),
        },
        config::Backend::Redis(redis) => {
            format!("redis (url not shown; {})", idemgate::store::RedisStore::describe_tls(redis))
        }
    };
    println!("store {store}, cache {}", cfg.store.cache.max_bytes);
    match idemgate::route::Router::from_config(&cfg) {
        Ok(router) => {
            println!("routes (first match wins):");
            for route in router.routes() {
                println!("  {}", route.describe());
            }
            let unmatched = if router.rejects_unmatched() { "rejected (404)" } else { "passed to the app" };
            println!("requests that match no route are {unmatched}");
            for warning in router.warnings() {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => invalid(&config::ConfigError(e)),
    }
}

fn invalid(e: &config::ConfigError) -> ExitCode {
    eprintln!("invalid config: {e}");
    ExitCode::from(EXIT_INVALID)
}

fn serve(path: &std::path::Path) -> ExitCode {
    let text = match config::read(path) {
        Ok(text) => text,
        Err(e) => return invalid(&e),
    };
    let loaded = Some(reload::digest(&text));
    let cfg = match config::parse(path, &text) {
        Ok(cfg) => cfg,
        Err(e) => return invalid(&e),
    };
    let telemetry = idemgate::telemetry::init(&cfg.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let running = match idemgate::server::start(cfg.clone()).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let reloader = running.reloader(path.to_path_buf(), cfg, loaded);
        // Without a watch (no inotify instances left, say), SIGHUP still reloads.
        let _watch = reload::watch_file(reloader.clone())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP"));
        // Last: whoever waits for this line may change the config file at once.
        tracing::info!(listen = %running.proxy_addr, admin = %running.admin_addr, "listening");
        wait_for_stop(&reloader).await;
        running.shutdown().await;
        ExitCode::SUCCESS
    });
    // Outside the runtime: the exporter's last flush blocks.
    drop(runtime);
    telemetry.shutdown();
    code
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the config.
async fn wait_for_stop(reloader: &Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => return tracing::info!(signal = "SIGINT", "stopping"),
            _ = hup.recv() => {
                reloader.reload(Trigger::Signal);
            }
        }
    }
}
