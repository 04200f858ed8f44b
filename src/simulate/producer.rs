//! `citystream simulate`: writes the fleet's records to Kafka.
//!
//! In: a [`FleetConfig`] and how much to produce. Out: records in the five topics, a
//! [`Summary`]. Guarantees: every record is either acknowledged by all in-sync replicas or
//! counted as failed (and the command then fails); an unreachable broker is reported, naming
//! the address, within `connect_timeout`, never a hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::fleet::{Fleet, FleetConfig, INJECTED_HEADER};
use crate::contract::Stream;
use crate::kafka::ClientError;
use crate::kafka::probe::{ProbeContext, SERVE_FOR, StartupProbe};
use crate::kafka::settings::KafkaClientSettings;

/// Errors of the simulator. All are definite: retrying the command as-is will not help.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The brokers did not answer, or refused the credentials or the TLS handshake (the
    /// message names the brokers and the settings to check; secrets are scrubbed).
    #[error(transparent)]
    Connect(ClientError),
    /// A topic could not be created.
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic (with prefix) that the broker refused to create.
        topic: String,
        /// Why.
        reason: String,
    },
    /// Some records were not delivered.
    #[error("{failed} of {total} records were not delivered to Kafka (first error: {first_error})")]
    Undelivered {
        /// How many failed.
        failed: u64,
        /// How many were sent.
        total: u64,
        /// The first delivery error seen.
        first_error: String,
    },
    /// Any other Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// How much, how fast, and where to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Bootstrap brokers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic = prefix + stream name.
    pub topic_prefix: String,
    /// Stop after this many records in total (over the five topics)…
    pub events: Option<u64>,
    /// …or after this much wall time.
    pub duration: Option<Duration>,
    /// Records per second; 0 = as fast as possible.
    pub rate: u64,
    /// Partitions of topics created because they are missing.
    pub partitions: i32,
    /// Give up reaching the brokers after this long.
    pub connect_timeout: Duration,
    /// Security settings and librdkafka passthrough (applied last) for every client.
    pub kafka: KafkaClientSettings,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// What was produced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Records acknowledged per stream, in [`Stream::ALL`] order.
    pub per_stream: [u64; 5],
    /// Records acknowledged in total.
    pub delivered: u64,
    /// Records that failed delivery.
    pub failed: u64,
    /// Records deliberately made late.
    pub injected_late: u64,
    /// Records deliberately corrupted.
    pub injected_malformed: u64,
    /// Value bytes produced.
    pub bytes: u64,
    /// Wall time from first send to last acknowledgement, in seconds.
    pub seconds: f64,
}

impl Summary {
    /// Acknowledged records per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.delivered as f64 / self.seconds } else { 0.0 }
    }
}

#[derive(Default)]
struct DeliveryCounts {
    per_stream: [AtomicU64; 5],
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

struct CountingContext(Arc<DeliveryCounts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    /// The stream index travels as the delivery opaque.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, stream: usize) {
        match result {
            Ok(_) => {
                self.0.per_stream[stream].fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// The producer settings, each with its reason.
fn producer_config(opts: &ProduceOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &opts.brokers)
        // No duplicates or reordering on retry, and acks=all: a record acknowledged is durable.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Batching for throughput: wait up to 20 ms to fill 1 MiB batches per partition.
        .set("linger.ms", "20")
        .set("batch.size", "1048576")
        .set("batch.num.messages", "100000")
        // lz4 is the cheapest codec per byte on the CPU; JSON compresses ~4x with it.
        .set("compression.type", "lz4")
        // A deep local queue so that the generator never waits on the network in bursts.
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        // Give up on a record after 2 minutes: it is then counted as failed, never silently lost.
        .set("message.timeout.ms", "120000")
        // Don't let a dead broker be retried in a tight loop.
        .set("reconnect.backoff.max.ms", "5000");
    opts.kafka.apply(&mut c);
    c
}

/// Checks that the brokers answer, and creates missing topics with `partitions` partitions.
pub fn ensure_topics(opts: &ProduceOptions, topics: &[String]) -> Result<(), SimulateError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &opts.brokers);
    opts.kafka.apply(&mut cfg);
    // Reach the brokers with a plain client first: its main queue delivers librdkafka's
    // complaints (refused credentials, TLS failures) to the probe, which explains a failure.
    let probe = Arc::new(StartupProbe::default());
    let client_error = |e: KafkaError| SimulateError::Connect(ClientError::Client(opts.kafka.scrub(&e.to_string())));
    let check: BaseProducer<ProbeContext> = cfg.create_with_context(ProbeContext(probe.clone())).map_err(client_error)?;
    let metadata = probe
        .wait_for(&opts.brokers, opts.connect_timeout, &opts.kafka, |t| check.client().fetch_metadata(None, t), || check.poll(SERVE_FOR))
        .map_err(SimulateError::Connect)?;
    let brokers = metadata.brokers().len().max(1) as i32;
    let missing: Vec<&String> = topics.iter().filter(|t| !metadata.topics().iter().any(|m| m.name() == t.as_str() && m.error().is_none())).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(client_error)?;
    let new: Vec<NewTopic<'_>> = missing.iter().map(|t| NewTopic::new(t, opts.partitions, TopicReplication::Fixed(brokers.min(3)))).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SimulateError::CreateTopic { topic: "*".into(), reason: e.to_string() })?;
    let results = rt.block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(opts.connect_timeout))))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(SimulateError::CreateTopic { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// Produces the fleet's records to Kafka until `events` or `duration` is reached.
pub fn produce(fleet_cfg: FleetConfig, opts: &ProduceOptions) -> Result<Summary, SimulateError> {
    let topics: Vec<String> = Stream::ALL.iter().map(|s| format!("{}{}", opts.topic_prefix, s.name())).collect();
    ensure_topics(opts, &topics)?;

    let counts = Arc::new(DeliveryCounts::default());
    let producer: BaseProducer<CountingContext> = producer_config(opts).create_with_context(CountingContext(counts.clone()))?;
    let mut fleet = Fleet::new(fleet_cfg);
    let bar = progress_bar(opts);
    // Without a terminal (no bar), a plain line every 10 s.
    let mut lines = opts.progress.then(|| crate::observe::progress::Lines::new("records sent"));
    let mut summary = Summary::default();
    let start = Instant::now();
    let mut sent: u64 = 0;
    'outer: loop {
        for rec in fleet.step() {
            if opts.events.is_some_and(|n| sent >= n) || opts.duration.is_some_and(|d| start.elapsed() >= d) {
                break 'outer;
            }
            if opts.rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / opts.rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    producer.poll(wait);
                }
            }
            let topic = &topics[rec.stream.index()];
            let headers = rec.injected.map(|i| OwnedHeaders::new().insert(Header { key: INJECTED_HEADER, value: Some(&i.header_value()) }));
            let mut record = BaseRecord::with_opaque_to(topic, rec.stream.index()).key(&rec.key).payload(&rec.value);
            if let Some(h) = headers {
                record = record.headers(h);
            }
            let mut record = Some(record);
            while let Some(r) = record.take() {
                match producer.send(r) {
                    Ok(()) => {}
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(50));
                        record = Some(r);
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            match rec.injected {
                Some(super::Injected::Late) => summary.injected_late += 1,
                Some(super::Injected::Malformed(_)) => summary.injected_malformed += 1,
                None => {}
            }
            summary.bytes += rec.value.len() as u64;
            sent += 1;
            if sent % 1024 == 0 {
                producer.poll(Duration::ZERO);
                bar.set_position(sent);
                if let Some(l) = lines.as_mut() {
                    l.update(sent, opts.events);
                }
            }
        }
    }
    // Wait for every acknowledgement (or its definite failure after message.timeout.ms).
    producer.flush(Duration::from_secs(180))?;
    bar.finish_and_clear();
    summary.seconds = start.elapsed().as_secs_f64();
    for (i, c) in counts.per_stream.iter().enumerate() {
        summary.per_stream[i] = c.load(Ordering::Relaxed);
    }
    summary.delivered = summary.per_stream.iter().sum();
    summary.failed = counts.failed.load(Ordering::Relaxed) + sent.saturating_sub(summary.delivered + counts.failed.load(Ordering::Relaxed));
    if summary.failed > 0 {
        let first_error =
            counts.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "not acknowledged before the flush deadline".into());
        return Err(SimulateError::Undelivered { failed: summary.failed, total: sent, first_error });
    }
    Ok(summary)
}

fn progress_bar(opts: &ProduceOptions) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !opts.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match opts.events {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} records [{elapsed_precise}] {per_sec}") {
        bar.set_style(style);
    }
    bar
}
