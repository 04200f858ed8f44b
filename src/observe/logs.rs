//! Logging: `--log-format text|json`, `RUST_LOG` filters, colour only on a terminal, and the
//! store-retry counter.
//!
//! Logs go to stderr, through [`super::progress::suspend`] so that a progress bar on the
//! terminal is cleared around each line instead of being torn by it. ANSI colours are written
//! only when stderr is a terminal (a log redirected to a file or collected by Kubernetes stays
//! plain text); `json` writes one JSON object per line (tracing-subscriber's JSON layer:
//! `timestamp`, `level`, `target`, `fields`, …) for log collectors.
//!
//! `object_store` retries transient request failures by itself and only says so in an INFO
//! line ("… backing off for … seconds, retry n of m"); a second layer, with its own filter so
//! that `RUST_LOG` cannot silence it, counts those lines as `citystream_store_retries_total{op="request"}`.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,rdkafka=warn,object_store=warn,buoyant_kernel=warn,deltalake_core=warn";

/// Installs the process's logger (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let writer = || super::progress::BarAwareStderr;
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(std::io::stderr().is_terminal()).with_filter(filter).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(writer).with_ansi(false).with_filter(filter).boxed(),
    };
    let retries = RetryCounter.with_filter(Targets::new().with_target("object_store", tracing::Level::INFO));
    let _ = tracing_subscriber::registry().with(fmt).with(retries).try_init();
}

/// Counts `object_store`'s retry lines.
#[derive(Debug)]
pub struct RetryCounter;

impl<S: tracing::Subscriber> Layer<S> for RetryCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut v = Message(String::new());
        event.record(&mut v);
        if is_retry(&v.0) {
            super::metrics().store_retry("request");
        }
    }
}

/// Whether an `object_store` log message announces a retry.
pub fn is_retry(message: &str) -> bool {
    message.contains("backing off for")
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_stores_retry_lines_are_recognised() {
        assert!(super::is_retry("Encountered server error with status 503 Service Unavailable, backing off for 0.1 seconds, retry 1 of 10"));
        assert!(super::is_retry("Encountered transport error of kind Connect, backing off for 0.2 seconds, retry 2 of 10: error"));
        assert!(!super::is_retry("manifest committed"));
    }

    #[test]
    fn a_retry_line_counts_once() {
        use tracing_subscriber::layer::SubscriberExt;
        let before = super::super::metrics().store_retries.get_or_create(&super::super::metrics::OpLabel { op: "request".into() }).get();
        let subscriber = tracing_subscriber::registry().with(super::RetryCounter);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "object_store::client::retry", "Encountered server error with status 500, backing off for {} seconds, retry {} of {}", 0.1, 1, 10);
            tracing::info!(target: "object_store::client::retry", "something else");
        });
        let after = super::super::metrics().store_retries.get_or_create(&super::super::metrics::OpLabel { op: "request".into() }).get();
        assert_eq!(after - before, 1);
    }
}
