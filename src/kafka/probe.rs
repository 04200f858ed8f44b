//! Start-up requests that fail fast and clearly: a [`StartupProbe`] collects what librdkafka
//! complains about while a request waits, so that a refusal of the credentials or of the TLS
//! handshake ends the wait at once with a hint naming the settings, and a timeout names the
//! brokers and librdkafka's last words (secrets scrubbed).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;

use super::ClientError;
use super::settings::KafkaClientSettings;

/// What librdkafka reported while a start-up request waited: its error-level log lines and
/// error events, kept to explain a failure (and to stop waiting at once when the brokers
/// refuse the credentials or the TLS handshake, which retrying cannot fix).
#[derive(Default)]
pub struct StartupProbe {
    seen: std::sync::Mutex<Vec<String>>,
}

/// Why Kafka refused a connection for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// SASL authentication failed (user, password or mechanism).
    Authentication,
    /// The TLS handshake failed (CA, certificate, host name, or TLS against a plaintext port).
    Tls,
}

impl Refusal {
    /// What to check, naming the settings.
    pub fn hint(self) -> &'static str {
        match self {
            Refusal::Authentication => {
                "the brokers refused the credentials: check --kafka-sasl-username, the password in CITYSTREAM_KAFKA_SASL_PASSWORD and --kafka-sasl-mechanism"
            }
            Refusal::Tls => {
                "the TLS handshake failed: check --kafka-ca (the CA that signed the brokers' certificates), the broker host names and --kafka-security-protocol"
            }
        }
    }
}

impl StartupProbe {
    fn record(&self, line: String) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&line) {
            if seen.len() >= 16 {
                seen.remove(0);
            }
            seen.push(line);
        }
    }

    /// A definite refusal seen so far, with librdkafka's words.
    pub fn refusal(&self) -> Option<(Refusal, String)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter().rev().find_map(|l| {
            let lower = l.to_ascii_lowercase();
            if lower.contains("authentication") {
                Some((Refusal::Authentication, l.clone()))
            } else if lower.contains("ssl handshake failed") || lower.contains("certificate verify failed") {
                Some((Refusal::Tls, l.clone()))
            } else {
                None
            }
        })
    }

    /// The last thing librdkafka complained about.
    pub fn last(&self) -> Option<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).last().cloned()
    }

    /// Runs `request` (given the time left) in short attempts until it succeeds, the brokers
    /// refuse us for good, or `timeout` passes; errors name the brokers and carry librdkafka's
    /// last complaint with secrets scrubbed. `serve` polls the client's main queue, which
    /// delivers librdkafka's log and error events to the [`ProbeContext`].
    pub fn wait_for<T>(
        &self,
        brokers: &str,
        timeout: Duration,
        client: &KafkaClientSettings,
        mut request: impl FnMut(Duration) -> Result<T, KafkaError>,
        mut serve: impl FnMut(),
    ) -> Result<T, ClientError> {
        let start = std::time::Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let err = match request(left.min(Duration::from_secs(1)).max(Duration::from_millis(100))) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            serve();
            if let Some((kind, words)) = self.refusal() {
                return Err(ClientError::Refused { brokers: brokers.to_owned(), hint: kind.hint(), reason: client.scrub(&words) });
            }
            if start.elapsed() >= timeout {
                let reason = match self.last() {
                    Some(last) => format!("{err}; last client error: {last}"),
                    None => err.to_string(),
                };
                return Err(ClientError::Unreachable { brokers: brokers.to_owned(), seconds: timeout.as_secs(), reason: client.scrub(&reason) });
            }
        }
    }
}

/// Serves a start-up consumer's queued events (logs, errors) to its [`ProbeContext`] for a
/// moment (a poll returns early on each error event; log events are consumed inside it).
pub(crate) fn serve(consumer: &BaseConsumer<ProbeContext>) {
    let until = std::time::Instant::now() + SERVE_FOR;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
        let _ = consumer.poll(left);
    }
}

/// How long a start-up attempt serves the client's events.
pub const SERVE_FOR: Duration = Duration::from_millis(50);

/// A client context that feeds a [`StartupProbe`] (and logs librdkafka's complaints at debug
/// level only: the start-up error reports them).
pub struct ProbeContext(pub Arc<StartupProbe>);

impl ClientContext for ProbeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= rdkafka::config::RDKafkaLogLevel::Warning as i32 {
            self.0.record(message.to_owned());
        }
        tracing::debug!(target: "librdkafka", "{fac} {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.record(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for ProbeContext {}

impl rdkafka::producer::ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}
