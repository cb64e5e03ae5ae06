//! Logging, and with the cargo feature `otel`, traces.
//!
//! Logs: one JSON object per line on stdout by default, or human-readable lines; `RUST_LOG`, when
//! set, overrides `log.level`. Traces: built with `--features otel` and given an endpoint in the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) variable, idemgate exports one
//! span per request over OTLP/HTTP, with child spans for `claim`, `forward` and `commit` and a
//! `replay` event, continuing the trace of the client's `traceparent`.

use crate::config::{LogConfig, LogFormat};
use crate::lock;
use std::sync::{Arc, Mutex};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod line;
pub use line::{RequestLine, write_info as write_request_line};

/// Target of the span events (`replay`) that belong in traces, not in the log.
pub const SPAN_EVENTS: &str = "idemgate::span_events";

/// Keeps the log writer and the exporter alive; [`Telemetry::shutdown`] (or dropping it) flushes
/// the log lines and spans not yet written.
#[must_use]
pub struct Telemetry {
    /// Log lines not yet on stdout; flushed at shutdown and when dropped.
    logs: Option<LogBuffer>,
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(logs) = &self.logs {
            logs.write_out();
        }
    }
}

impl Telemetry {
    #[allow(unused_mut)]
    pub fn shutdown(mut self) {
        #[cfg(feature = "otel")]
        if let Some(Err(e)) = self.provider.take().map(|p| p.shutdown()) {
            tracing::warn!(error = %e, "flushing spans at exit failed");
        }
    }
}

pub fn init(cfg: &LogConfig) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = match format!("{SPAN_EVENTS}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // Each line is appended to a buffer that a thread writes out every `LOG_FLUSH_EVERY`: a
    // request neither waits for stdout (a slow terminal or log shipper) nor wakes a thread.
    let writer = LogBuffer::start();
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let fmt = match cfg.format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    #[cfg(feature = "otel")]
    let (registry, provider) = {
        let (layer, provider) = otel::layer();
        (registry.with(layer), provider)
    };
    // A second init (tests start several proxies in one process) keeps the first subscriber.
    let installed = registry.try_init().is_ok();
    if installed && cfg.format == LogFormat::Json {
        line::install(writer.clone());
    }
    Telemetry {
        logs: installed.then_some(writer),
        #[cfg(feature = "otel")]
        provider,
    }
}

/// Continues the client's trace: the request span's parent is its `traceparent`.
#[cfg(feature = "otel")]
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    use opentelemetry::propagation::TextMapPropagator;
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

#[cfg(not(feature = "otel"))]
pub fn continue_trace(_span: &tracing::Span, _headers: &http::HeaderMap) {}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;

    /// The OTLP layer, when an endpoint is configured in the environment.
    pub fn layer<S>() -> (Option<Box<dyn Layer<S> + Send + Sync>>, Option<SdkTracerProvider>)
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if !configured {
            return (None, None);
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("OTLP exporter not started: {e}");
                return (None, None);
            }
        };
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("idemgate").build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        // Only idemgate's own spans: the request, its stages and the replay event.
        let targets = Targets::new().with_target("idemgate", tracing::Level::DEBUG);
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("idemgate")).with_filter(targets);
        (Some(Box::new(layer)), Some(provider))
    }
}

/// How often buffered log lines are written to stdout.
const LOG_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// Past this many buffered bytes the line that passes it writes the buffer out itself: the
/// buffer stays bounded, and nothing is dropped (a missing request line is worse than a slow one).
const LOG_BUFFER_MAX: usize = 1 << 20;

/// Log lines on their way to stdout, in the order they were written: one buffer for every
/// thread. (A buffer per thread took no shared lock per line, but let two requests' lines come
/// out in another order than they were written, and measured no faster on two cores.)
#[derive(Clone)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn start() -> LogBuffer {
        let buffer = LogBuffer(Arc::default());
        let flusher = Arc::downgrade(&buffer.0);
        // Ends with the last handle (the subscriber's, in a process's lifetime: never).
        let _ = std::thread::Builder::new().name("idemgate-log".into()).spawn(move || {
            while let Some(lines) = flusher.upgrade() {
                drop(lines);
                std::thread::sleep(LOG_FLUSH_EVERY);
                if let Some(lines) = flusher.upgrade() {
                    LogBuffer(lines).write_out();
                }
            }
        });
        buffer
    }

    /// Writes every buffered line to stdout, in order.
    pub fn write_out(&self) {
        // Held while writing, so that two write-outs cannot reorder lines.
        let mut lines = lock(&self.0);
        if lines.is_empty() {
            return;
        }
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&lines).and_then(|()| stdout.flush());
        lines.clear();
        lines.shrink_to(LOG_BUFFER_MAX);
    }

    fn append(&self, bytes: &[u8]) {
        let full = {
            let mut lines = lock(&self.0);
            lines.extend_from_slice(bytes);
            lines.len() > LOG_BUFFER_MAX
        };
        if full {
            self.write_out();
        }
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter { buffer: self.clone(), at_once: false }
    }

    /// Warnings and errors are written out at once, with every line buffered before them: they
    /// are rare, and they are the lines an operator needs after a crash (a lost claim, a
    /// completion that could not be stored), which a SIGKILL within the flush interval would
    /// otherwise take with it.
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LogWriter {
        LogWriter { buffer: self.clone(), at_once: *meta.level() <= tracing::Level::WARN }
    }
}

/// One log line's way into the [`LogBuffer`].
pub struct LogWriter {
    buffer: LogBuffer,
    at_once: bool,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // The line is complete once its writer is dropped (tracing writes a line through one).
        if self.at_once {
            self.buffer.write_out();
        }
    }
}
