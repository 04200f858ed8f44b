//! Kafka in one place: how every client of citystream is configured and reaches the brokers.
//!
//! - [`KafkaOptions`]: brokers, topic names, the consumer group, and [`settings`] (security and
//!   librdkafka passthrough); [`KafkaOptions::client_config`] is the one place librdkafka
//!   settings are chosen, each with the reason.
//! - Start-up requests ([`KafkaOptions::discover`], [`KafkaOptions::watermarks`], the producer's
//!   topic check) wait through a [`probe::StartupProbe`], which fails fast and clearly when the
//!   brokers refuse the credentials or the TLS handshake, and names the brokers otherwise.
//! - [`Quiet`]: the context of long-lived clients: transient client errors are warnings,
//!   throttled, because librdkafka retries them itself.
//!
//! The readers ([`crate::source::kafka`]), the producer ([`crate::simulate::producer`]) and the
//! consumer-group offset commits ([`crate::commit::offsets`]) use this module; the CLI only turns
//! flags into its settings.

pub mod batch;
pub mod probe;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use self::probe::{ProbeContext, StartupProbe, serve};
use self::settings::KafkaClientSettings;
use crate::contract::Stream;
use crate::ownership::{Offset, PartitionId};

/// Errors of a Kafka client. Transient ones are retried by librdkafka itself (it reconnects and
/// refetches); what surfaces here is definite.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The brokers did not answer in time.
    #[error("cannot reach Kafka brokers at {brokers} within {seconds} s (check --brokers / CITYSTREAM_BROKERS and that the broker runs): {reason}")]
    Unreachable {
        /// Bootstrap list.
        brokers: String,
        /// How long we waited.
        seconds: u64,
        /// librdkafka's words.
        reason: String,
    },
    /// A topic does not exist.
    #[error("Kafka topic {topic} does not exist on {brokers} (check --topic-prefix; create it or run `citystream simulate` first)")]
    UnknownTopic {
        /// The missing topic.
        topic: String,
        /// Bootstrap list.
        brokers: String,
    },
    /// The brokers refused the credentials or the TLS handshake (definite: retrying won't help).
    #[error("cannot connect to Kafka at {brokers}: {hint} ({reason})")]
    Refused {
        /// Bootstrap list.
        brokers: String,
        /// What to check, naming the settings.
        hint: &'static str,
        /// librdkafka's words, secrets scrubbed.
        reason: String,
    },
    /// The client could not be created from the settings (librdkafka's words, secrets scrubbed).
    #[error("cannot create the Kafka client (check --kafka-option and the --kafka-* flags): {0}")]
    Client(String),
    /// Any other Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// How to reach Kafka.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Topic = prefix + stream name.
    pub topic_prefix: String,
    /// Consumer group that receives committed offsets.
    pub group: String,
    /// Bound on metadata and watermark requests.
    pub timeout: Duration,
    /// Security settings and librdkafka passthrough (applied last); `Debug` shows no secret.
    pub client: KafkaClientSettings,
    /// Bytes of fetched, not yet consumed records librdkafka may hold per process
    /// (`--kafka-prefetch`), shared by the partitions the process reads; see
    /// [`KafkaOptions::reader_config`].
    pub prefetch: u64,
}

/// The least prefetch per partition (KiB): below it a partition needs a fetch round trip for
/// every thousand or so records (JSON compresses ≈ 4.5 × with lz4).
pub const MIN_PARTITION_PREFETCH_KIB: u64 = 64;
/// The most prefetch per partition (KiB): one fetch of a partition (`max.partition.fetch.bytes`)
/// is this large, and more queued per partition did not read faster (docs/benchmarks.md).
pub const MAX_PARTITION_PREFETCH_KIB: u64 = 1024;
/// `--kafka-prefetch`'s default: 8 MiB of (compressed) fetched records per process.
pub const DEFAULT_PREFETCH: u64 = 8 << 20;

impl KafkaOptions {
    /// The topic of a stream.
    pub fn topic(&self, stream: Stream) -> String {
        format!("{}{}", self.topic_prefix, stream.name())
    }

    /// Settings shared by every client we create.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = self.defaults();
        self.client.apply(&mut c);
        c
    }

    /// Our choice of every setting, before the connection settings and `--kafka-option`.
    fn defaults(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            // Offsets go to the group only after a manifest is durable, by us, never by a timer.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A partition no manifest knows starts at its beginning; an offset lost to retention
            // also restarts at the earliest one still there (librdkafka logs it).
            .set("auto.offset.reset", "earliest")
            // Tell us when a partition is caught up: that is how idle partitions are detected.
            .set("enable.partition.eof", "true")
            // Only committed transactional data (the default, stated because it matters).
            .set("isolation.level", "read_committed")
            // librdkafka's prefetch is bounded per partition by bytes (set by `reader_config`)
            // or by this many messages, whichever is reached first.
            .set("queued.min.messages", "20000")
            // When a partition's queue is full librdkafka waits this long before fetching it
            // again: its default (1 s) capped every partition at one queue's worth per second
            // (docs/benchmarks.md). The queue bound is what limits memory, not this wait.
            .set("fetch.queue.backoff.ms", "1")
            // Fetch up to 16 MiB per request (per partition: `reader_config`); answer within
            // 100 ms when data is sparse.
            .set("fetch.max.bytes", "16777216")
            .set("fetch.wait.max.ms", "100")
            // Don't hammer a broker that is down; librdkafka keeps reconnecting by itself.
            .set("reconnect.backoff.max.ms", "5000");
        c
    }

    /// Settings of a client that reads `partitions` partitions, one of `workers` such clients
    /// in the process: [`KafkaOptions::client_config`] with the prefetch bound per partition.
    ///
    /// librdkafka fetches ahead until a partition's queue holds `queued.max.messages.kbytes`
    /// (counted as fetched, i.e. compressed; decompressed the records take several times that,
    /// plus an op of ≈ 180 bytes each). Its default of 64 MiB per partition — and our earlier
    /// fixed 1 MiB — made the prefetch grow with the partition count: 30 partitions at 1 MiB
    /// held ≈ 230 MiB of a 540 MiB process. So `--kafka-prefetch` is one budget per process,
    /// split evenly, each partition getting between [`MIN_PARTITION_PREFETCH_KIB`] and
    /// [`MAX_PARTITION_PREFETCH_KIB`]; a fetch of a partition is as large as its queue. Options
    /// given with `--kafka-option` still win (applied last).
    pub fn reader_config(&self, workers: usize, partitions: usize) -> ClientConfig {
        let kib = partition_prefetch_kib(self.prefetch, workers, partitions);
        let mut c = self.defaults();
        c.set("queued.max.messages.kbytes", kib.to_string()).set("max.partition.fetch.bytes", (kib * 1024).to_string());
        self.client.apply(&mut c);
        c
    }

    /// Every partition of the five topics; fails clearly — within `timeout`, naming the brokers
    /// or the topic — if the brokers cannot be reached, refuse the credentials or the TLS
    /// handshake, or a topic is missing.
    pub fn discover(&self) -> Result<Vec<PartitionId>, ClientError> {
        let probe = Arc::new(StartupProbe::default());
        let consumer: BaseConsumer<ProbeContext> =
            self.client_config().create_with_context(ProbeContext(probe.clone())).map_err(|e| ClientError::Client(self.client.scrub(&e.to_string())))?;
        let metadata = probe.wait_for(&self.brokers, self.timeout, &self.client, |t| consumer.fetch_metadata(None, t), || serve(&consumer))?;
        let mut out = Vec::new();
        for stream in Stream::ALL {
            let topic = self.topic(stream);
            let found = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            let Some(t) = found else {
                return Err(ClientError::UnknownTopic { topic, brokers: self.brokers.clone() });
            };
            out.extend(t.partitions().iter().map(|p| PartitionId { stream, partition: p.id() }));
        }
        Ok(out)
    }

    /// Low and high watermarks (first offset still held, next offset to be written) of
    /// `partitions`. Reading a partition that no manifest knows starts at its low watermark,
    /// given as an explicit offset: librdkafka's `BEGINNING` costs an extra offset lookup that
    /// took ≈ 0.5 s before the first record (measured; docs/benchmarks.md).
    pub fn watermarks(&self, partitions: &[PartitionId]) -> Result<HashMap<PartitionId, Watermarks>, ClientError> {
        let probe = Arc::new(StartupProbe::default());
        let consumer: BaseConsumer<ProbeContext> =
            self.client_config().create_with_context(ProbeContext(probe.clone())).map_err(|e| ClientError::Client(self.client.scrub(&e.to_string())))?;
        let mut out = HashMap::new();
        for p in partitions {
            let topic = self.topic(p.stream);
            let (low, high) =
                probe.wait_for(&self.brokers, self.timeout, &self.client, |t| consumer.fetch_watermarks(&topic, p.partition, t), || serve(&consumer))?;
            out.insert(*p, Watermarks { low: Offset(low), high: Offset(high) });
        }
        Ok(out)
    }
}

/// A partition's offsets at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The first offset the broker still holds (retention deletes below it).
    pub low: Offset,
    /// The next offset to be written.
    pub high: Offset,
}

/// Our client context: librdkafka's end-of-partition notices are expected (we ask for them to
/// detect idle partitions), so they are not logged as errors; everything else is a warning,
/// because librdkafka retries transient errors itself (a broker that is down or restarting is
/// reconnected to, fetching resumes at the position it stopped). Repeats are throttled.
pub struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl ConsumerContext for Quiet {}

/// How [`Quiet`] and the reading client's context report a client error.
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)) {
        tracing::trace!(%reason, "end of partition");
    } else if let Some(suppressed) = throttle(&error) {
        tracing::warn!(%error, %reason, suppressed, "kafka client (librdkafka retries by itself)");
    }
}

/// How often one kind of client error is logged: while a broker is down every connection of
/// every client reports it every few hundred milliseconds.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// `Some(n)` if an error of this kind should be logged now, `n` being how many of its kind were
/// not logged since the last time; `None` to stay quiet.
pub(crate) fn throttle(error: &KafkaError) -> Option<u64> {
    static SEEN: std::sync::Mutex<Option<HashMap<String, (Instant, u64)>>> = std::sync::Mutex::new(None);
    let kind = error.rdkafka_error_code().map_or_else(|| format!("{error:?}"), |c| format!("{c:?}"));
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashMap::new);
    let Some(entry) = seen.get_mut(&kind) else {
        seen.insert(kind, (Instant::now(), 0));
        return Some(0);
    };
    if entry.0.elapsed() >= WARN_EVERY {
        let suppressed = entry.1;
        *entry = (Instant::now(), 0);
        Some(suppressed)
    } else {
        entry.1 += 1;
        None
    }
}

/// The prefetch of one partition (KiB): `prefetch` bytes per process split over `workers`
/// readers of `partitions` partitions each, within [`MIN_PARTITION_PREFETCH_KIB`] and
/// [`MAX_PARTITION_PREFETCH_KIB`].
pub fn partition_prefetch_kib(prefetch: u64, workers: usize, partitions: usize) -> u64 {
    let shares = (workers.max(1) * partitions.max(1)) as u64;
    (prefetch / 1024 / shares).clamp(MIN_PARTITION_PREFETCH_KIB, MAX_PARTITION_PREFETCH_KIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_is_one_budget_split_over_the_partitions_read() {
        // The benchmark's fleet run: one process, 2 workers, 15 partitions each.
        assert_eq!(partition_prefetch_kib(DEFAULT_PREFETCH, 2, 15), 273);
        // Few partitions: one fetch each at most.
        assert_eq!(partition_prefetch_kib(DEFAULT_PREFETCH, 1, 2), MAX_PARTITION_PREFETCH_KIB);
        // Very many: the floor, so the budget is exceeded rather than reading stalling.
        assert_eq!(partition_prefetch_kib(DEFAULT_PREFETCH, 4, 500), MIN_PARTITION_PREFETCH_KIB);
        assert_eq!(partition_prefetch_kib(64 << 20, 2, 0), MAX_PARTITION_PREFETCH_KIB);
    }

    #[test]
    fn the_reader_gets_its_share_unless_an_option_says_otherwise() {
        let mut opts = KafkaOptions {
            brokers: "127.0.0.1:1".into(),
            topic_prefix: String::new(),
            group: "g".into(),
            timeout: Duration::from_secs(1),
            client: KafkaClientSettings::default(),
            prefetch: 4 << 20,
        };
        let c = opts.reader_config(2, 8);
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("256"));
        assert_eq!(c.get("max.partition.fetch.bytes"), Some("262144"));
        opts.client = KafkaClientSettings::with_options(vec![settings::parse_kafka_option("queued.max.messages.kbytes=2048").unwrap()]);
        let c = opts.reader_config(2, 8);
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("2048"));
        assert_eq!(c.get("max.partition.fetch.bytes"), Some("262144"));
    }
}
