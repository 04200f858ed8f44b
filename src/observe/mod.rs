//! Seeing citystream run: Prometheus metrics, the health endpoints, logs, progress.
//!
//! | module | holds |
//! |---|---|
//! | [`metrics`](mod@metrics) | every exported metric, registered once per process, and the events that update them |
//! | [`source`] | a source's own metric handles (per worker, no lookup per record) |
//! | [`process`] | the process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …) |
//! | [`health`](mod@health) | worker heartbeats and readiness, for `/healthz` and `/readyz` |
//! | [`http`] | the `--metrics-addr` endpoint, on a thread of its own |
//! | [`logs`] | `--log-format text|json`, colour only on a terminal, the store-retry counter |
//! | [`progress`] | progress bars on a terminal, periodic lines elsewhere |
//!
//! Metrics are always counted (an atomic add per activation costs nothing measurable, see
//! docs/benchmarks.md); the endpoint that serves them is off unless `--metrics-addr` is given.
//! The registry is one per process ([`metrics()`]), because one process is what Prometheus
//! scrapes.

pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod progress;
pub mod source;

use std::sync::OnceLock;

pub use metrics::{Metrics, Outcome};

static METRICS: OnceLock<Metrics> = OnceLock::new();
static HEALTH: OnceLock<health::Health> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The process's health.
pub fn health() -> &'static health::Health {
    HEALTH.get_or_init(health::Health::default)
}
