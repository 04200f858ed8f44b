//! The Kafka source: one consumer per worker, manually assigned to the partitions the worker
//! owns, at the offsets the latest manifest says. No consumer-group rebalancing: ownership is
//! decided by [`crate::ownership`], and offsets are committed to the group only for
//! monitoring, after the manifest that makes them true is durable.
//!
//! Each partition gets its own queue (librdkafka's `split_partition_queue`), polled in turn,
//! so that a busy partition cannot starve the others and an end-of-partition event can be
//! attributed to its topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::watch::{ClientStates, EndWatcher};
use super::{Event, Progress, Reader, SourceError};
use crate::cli::kafka::KafkaClientSettings;
use crate::contract::Stream;
use crate::ownership::PartitionId;

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
}

impl KafkaOptions {
    /// The topic of a stream.
    pub fn topic(&self, stream: Stream) -> String {
        format!("{}{}", self.topic_prefix, stream.name())
    }

    /// Settings shared by every client we create.
    pub fn client_config(&self) -> ClientConfig {
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
            // Bound prefetch memory: librdkafka keeps up to this much per partition queue (its
            // default, 64 MiB and 100k messages per partition, is what makes consumers of many
            // partitions large). 1 MiB per partition (one fetch) keeps the decoder fed; measured.
            .set("queued.max.messages.kbytes", "1024")
            .set("queued.min.messages", "20000")
            // When a partition's queue is full librdkafka waits this long before fetching it
            // again: its default (1 s) capped every partition at ~1 MiB/s with the bound above
            // (docs/benchmarks.md). The queue bound is what limits memory, not this wait.
            .set("fetch.queue.backoff.ms", "1")
            // Fetch up to 1 MiB per partition and 16 MiB per request; answer within 100 ms
            // when data is sparse.
            .set("max.partition.fetch.bytes", "1048576")
            .set("fetch.max.bytes", "16777216")
            .set("fetch.wait.max.ms", "100")
            // Don't hammer a broker that is down; librdkafka keeps reconnecting by itself.
            .set("reconnect.backoff.max.ms", "5000");
        self.client.apply(&mut c);
        c
    }

    /// Every partition of the five topics; fails clearly — within `timeout`, naming the brokers
    /// or the topic — if the brokers cannot be reached, refuse the credentials or the TLS
    /// handshake, or a topic is missing.
    pub fn discover(&self) -> Result<Vec<PartitionId>, SourceError> {
        let probe = Arc::new(StartupProbe::default());
        let consumer: BaseConsumer<ProbeContext> =
            self.client_config().create_with_context(ProbeContext(probe.clone())).map_err(|e| SourceError::Client(self.client.scrub(&e.to_string())))?;
        let metadata = probe.wait_for(&self.brokers, self.timeout, &self.client, |t| consumer.fetch_metadata(None, t), || serve(&consumer))?;
        let mut out = Vec::new();
        for stream in Stream::ALL {
            let topic = self.topic(stream);
            let found = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            let Some(t) = found else {
                return Err(SourceError::UnknownTopic { topic, brokers: self.brokers.clone() });
            };
            out.extend(t.partitions().iter().map(|p| PartitionId { stream, partition: p.id() }));
        }
        Ok(out)
    }

    /// Low and high watermarks (first offset still held, next offset to be written) of
    /// `partitions`. Reading a partition that no manifest knows starts at its low watermark,
    /// given as an explicit offset: librdkafka's `BEGINNING` costs an extra offset lookup that
    /// took ≈ 0.5 s before the first record (measured; docs/benchmarks.md).
    pub fn watermarks(&self, partitions: &[PartitionId]) -> Result<HashMap<PartitionId, Watermarks>, SourceError> {
        let probe = Arc::new(StartupProbe::default());
        let consumer: BaseConsumer<ProbeContext> =
            self.client_config().create_with_context(ProbeContext(probe.clone())).map_err(|e| SourceError::Client(self.client.scrub(&e.to_string())))?;
        let mut out = HashMap::new();
        for p in partitions {
            let topic = self.topic(p.stream);
            let (low, high) =
                probe.wait_for(&self.brokers, self.timeout, &self.client, |t| consumer.fetch_watermarks(&topic, p.partition, t), || serve(&consumer))?;
            out.insert(*p, Watermarks { low, high });
        }
        Ok(out)
    }
}

/// A partition's offsets at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The first offset the broker still holds (retention deletes below it).
    pub low: i64,
    /// The next offset to be written.
    pub high: i64,
}

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
    ) -> Result<T, SourceError> {
        let start = std::time::Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let err = match request(left.min(Duration::from_secs(1)).max(Duration::from_millis(100))) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            serve();
            if let Some((kind, words)) = self.refusal() {
                return Err(SourceError::Refused { brokers: brokers.to_owned(), hint: kind.hint(), reason: client.scrub(&words) });
            }
            if start.elapsed() >= timeout {
                let reason = match self.last() {
                    Some(last) => format!("{err}; last client error: {last}"),
                    None => err.to_string(),
                };
                return Err(SourceError::Unreachable { brokers: brokers.to_owned(), seconds: timeout.as_secs(), reason: client.scrub(&reason) });
            }
        }
    }
}

/// Serves a start-up consumer's queued events (logs, errors) to its [`ProbeContext`] for a
/// moment (a poll returns early on each error event; log events are consumed inside it).
fn serve(consumer: &BaseConsumer<ProbeContext>) {
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

/// How [`Quiet`] and [`ReaderContext`] report a client error.
fn log_client_error(error: KafkaError, reason: &str) {
    if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)) {
        tracing::trace!(%reason, "end of partition");
    } else if let Some(suppressed) = throttle(&error) {
        tracing::warn!(%error, %reason, suppressed, "kafka client (librdkafka retries by itself)");
    }
}

/// The reading client's context: [`Quiet`], and it keeps librdkafka's statistics of the
/// partitions (their fetch state, queue, offsets) for the stall guard's log lines.
pub struct ReaderContext(Arc<ClientStates>);

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.0.record(statistics);
    }
}

impl ConsumerContext for ReaderContext {}

/// How often one kind of client error is logged: while a broker is down every connection of
/// every client reports it every few hundred milliseconds.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// `Some(n)` if an error of this kind should be logged now, `n` being how many of its kind were
/// not logged since the last time; `None` to stay quiet.
fn throttle(error: &KafkaError) -> Option<u64> {
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

/// How often the reading client reports its statistics (read only for log lines about stalls).
const STATISTICS_EVERY_MS: &str = "5000";

/// One owned partition as the reader sees it.
struct ReadPartition {
    id: PartitionId,
    topic: String,
    /// Its own queue on the current client (see the module doc); `None` once paused and the
    /// client re-created without it.
    queue: Option<PartitionQueue<ReaderContext>>,
    /// Held back by the source (see [`Reader::hold`]).
    held: bool,
    /// Finished: not assigned again when the client is re-created.
    paused: bool,
    /// One past the last record delivered (where a re-created client starts).
    next: i64,
    /// When the last record or end-of-partition event was delivered.
    delivered_at: Instant,
}

/// Reads one worker's partitions.
pub struct KafkaReader {
    opts: KafkaOptions,
    client_id: String,
    consumer: Arc<BaseConsumer<ReaderContext>>,
    parts: Vec<ReadPartition>,
    next_queue: usize,
    /// Since when the consumer reports errors and no record arrived (a broker outage).
    troubled_since: Option<Instant>,
    /// The broker's end offsets, from a client of their own.
    ends: EndWatcher,
    /// librdkafka's statistics of the current client.
    states: Arc<ClientStates>,
    /// How many times the client was re-created.
    recreated: u32,
}

impl KafkaReader {
    /// Assigns `owned` partitions at their start offsets (`None`: the beginning). An offset that
    /// retention has deleted in the meantime restarts at the earliest one still held
    /// (`auto.offset.reset=earliest`).
    pub fn new(opts: &KafkaOptions, owned: &[(PartitionId, Option<i64>)], client_id: &str) -> Result<Self, SourceError> {
        let ids: Vec<PartitionId> = owned.iter().map(|(id, _)| *id).collect();
        let ends = EndWatcher::start(opts, &ids, client_id)?;
        let states = Arc::new(ClientStates::default());
        let starts: Vec<(PartitionId, Offset)> = owned.iter().map(|(id, start)| (*id, start.map_or(Offset::Beginning, Offset::Offset))).collect();
        let (consumer, queues) = Self::connect(opts, client_id, &states, &starts)?;
        let now = Instant::now();
        let parts = owned
            .iter()
            .zip(queues)
            .map(|((id, start), queue)| ReadPartition {
                id: *id,
                topic: opts.topic(id.stream),
                queue: Some(queue),
                held: false,
                paused: false,
                next: start.unwrap_or(0),
                delivered_at: now,
            })
            .collect();
        Ok(KafkaReader {
            opts: opts.clone(),
            client_id: client_id.to_owned(),
            consumer,
            parts,
            next_queue: 0,
            troubled_since: None,
            ends,
            states,
            recreated: 0,
        })
    }

    /// A client assigned to `starts`, with a queue of its own per partition, in that order.
    #[allow(clippy::type_complexity)]
    fn connect(
        opts: &KafkaOptions,
        client_id: &str,
        states: &Arc<ClientStates>,
        starts: &[(PartitionId, Offset)],
    ) -> Result<(Arc<BaseConsumer<ReaderContext>>, Vec<PartitionQueue<ReaderContext>>), SourceError> {
        let consumer: Arc<BaseConsumer<ReaderContext>> = Arc::new(
            opts.client_config()
                .set("client.id", client_id)
                .set("statistics.interval.ms", STATISTICS_EVERY_MS)
                .create_with_context(ReaderContext(states.clone()))?,
        );
        let mut tpl = TopicPartitionList::new();
        for (id, offset) in starts {
            tpl.add_partition_offset(&opts.topic(id.stream), id.partition, *offset)?;
        }
        consumer.assign(&tpl)?;
        let mut queues = Vec::new();
        for (id, _) in starts {
            let topic = opts.topic(id.stream);
            let q = consumer
                .split_partition_queue(&topic, id.partition)
                .ok_or_else(|| SourceError::Kafka(KafkaError::Subscription(format!("no queue for {topic}/{}", id.partition))))?;
            queues.push(q);
        }
        Ok((consumer, queues))
    }

    /// Serves the client's main queue: statistics and errors, which are transient (librdkafka
    /// reconnects and refetches by itself) and logged, throttled. Every owned partition has a
    /// queue of its own, so a message here means the client no longer forwards a partition to
    /// it: its records would be lost to us, so the client is re-created.
    fn serve_main_queue(&mut self) -> Result<(), SourceError> {
        match self.consumer.poll(Duration::ZERO) {
            Some(Err(e)) => {
                self.troubled_since.get_or_insert_with(Instant::now);
                if let Some(suppressed) = throttle(&e) {
                    tracing::warn!(error = %e, suppressed, "kafka consumer event (librdkafka retries by itself)");
                }
                Ok(())
            }
            Some(Ok(m)) => {
                let (topic, partition, offset) = (m.topic().to_owned(), m.partition(), m.offset());
                drop(m);
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    "kafka: a record arrived on the client's main queue instead of its partition's queue; re-creating the client to read it in order"
                );
                self.recover()
            }
            None => Ok(()),
        }
    }
}

impl Reader for KafkaReader {
    fn poll(&mut self, budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, SourceError> {
        self.serve_main_queue()?;
        let mut delivered = 0;
        let n = self.parts.len();
        let per_queue = (budget / n.max(1)).max(64);
        for _ in 0..n {
            let part = &mut self.parts[self.next_queue];
            self.next_queue = (self.next_queue + 1) % n;
            if part.held || part.paused {
                continue;
            }
            let Some(queue) = part.queue.as_ref() else { continue };
            let mut taken = 0;
            let mut last = None;
            while taken < per_queue {
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => {
                        f(Event::Record { id: part.id, offset: m.offset(), payload: m.payload().unwrap_or_default() });
                        last = Some(m.offset());
                        taken += 1;
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        f(Event::Caught { id: part.id });
                        taken += 1;
                        break;
                    }
                    Some(Err(e)) => {
                        // Fetch errors are transient: librdkafka retries; we report and go on.
                        self.troubled_since.get_or_insert_with(Instant::now);
                        if let Some(suppressed) = throttle(&e) {
                            tracing::warn!(partition = %part.id, error = %e, suppressed, "kafka fetch error (librdkafka retries by itself)");
                        }
                        break;
                    }
                }
            }
            if let Some(offset) = last {
                part.next = offset + 1;
            }
            if taken > 0 {
                part.delivered_at = Instant::now();
            }
            delivered += taken;
            if taken > 0
                && let Some(since) = self.troubled_since.take()
            {
                tracing::info!(after = ?since.elapsed(), "kafka: records arriving again after client errors");
            }
            if delivered >= budget {
                break;
            }
        }
        Ok(delivered)
    }

    fn hold(&mut self, id: PartitionId, held: bool) {
        if let Some(p) = self.parts.iter_mut().find(|p| p.id == id) {
            p.held = held;
        }
    }

    fn pause(&mut self, id: PartitionId) {
        if let Some(p) = self.parts.iter_mut().find(|p| p.id == id) {
            p.paused = true;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&p.topic, id.partition);
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::warn!(partition = %id, error = %e, "pausing a finished partition failed; its further records are ignored");
            }
        }
    }

    fn progress(&mut self) -> Vec<Progress> {
        // The client's position is past transaction markers, which are never delivered.
        let positions: HashMap<(String, i32), i64> = match self.consumer.position() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        self.parts
            .iter()
            .filter(|p| !p.paused)
            .map(|p| {
                let position = positions.get(&(p.topic.clone(), p.id.partition)).map_or(p.next, |&o| o.max(p.next));
                let end = self.ends.end(p.id);
                Progress { id: p.id, position, end: end.map(|e| e.offset), fresh: end.is_some_and(|e| e.asked_at > p.delivered_at) }
            })
            .collect()
    }

    fn recover(&mut self) -> Result<(), SourceError> {
        self.recreated += 1;
        let starts: Vec<(PartitionId, Offset)> = self.parts.iter().filter(|p| !p.paused).map(|p| (p.id, Offset::Offset(p.next))).collect();
        tracing::warn!(client = %self.client_id, recreated = self.recreated, partitions = starts.len(), "kafka: re-creating the reading client at the next offset of every partition");
        let client_id = format!("{}-r{}", self.client_id, self.recreated);
        let (consumer, queues) = Self::connect(&self.opts, &client_id, &self.states, &starts)?;
        let mut queues = queues.into_iter();
        let now = Instant::now();
        for p in &mut self.parts {
            p.queue = if p.paused { None } else { queues.next() };
            p.delivered_at = now;
        }
        // The old client goes once no queue refers to it any more (now).
        self.consumer = consumer;
        Ok(())
    }

    fn describe(&self, id: PartitionId) -> String {
        match self.parts.iter().find(|p| p.id == id) {
            Some(p) => self.states.describe(&p.topic, id.partition),
            None => "not owned".to_owned(),
        }
    }
}

/// Commits consumer-group offsets for monitoring, after a manifest is durable. Failures are
/// warnings: the manifest, not the group offset, is the truth. Commits are asynchronous; the last
/// one is repeated synchronously when the committer is dropped at the end of a run, on a helper
/// thread waited for at most [`FINAL_COMMIT_WAIT`], so that a broker that is down cannot hold up
/// the exit (librdkafka's synchronous commit has no timeout of its own); normally a finished run
/// leaves the group exactly at the committed positions.
pub struct OffsetCommitter {
    /// Always `Some` until dropped (see `Drop`).
    consumer: Option<BaseConsumer<Quiet>>,
    opts: KafkaOptions,
    last: Option<TopicPartitionList>,
}

/// How long the final offset commit may take before the run ends without it.
pub const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

impl OffsetCommitter {
    /// A client for committing offsets of `opts.group`.
    pub fn new(opts: &KafkaOptions) -> Result<Self, SourceError> {
        let consumer = opts.client_config().create_with_context(Quiet)?;
        Ok(OffsetCommitter { consumer: Some(consumer), opts: opts.clone(), last: None })
    }

    /// Commits `offset` (the next to read) for each partition, asynchronously.
    pub fn commit(&mut self, offsets: &[(PartitionId, i64)]) {
        let Some(consumer) = self.consumer.as_ref() else { return };
        let mut tpl = TopicPartitionList::new();
        for (id, offset) in offsets {
            if tpl.add_partition_offset(&self.opts.topic(id.stream), id.partition, Offset::Offset(*offset)).is_err() {
                return;
            }
        }
        if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
            tracing::warn!(error = %e, "committing consumer-group offsets failed (the manifest is unaffected)");
        }
        let _ = consumer.poll(Duration::ZERO);
        self.last = Some(tpl);
    }

    /// Commits the last offsets synchronously on a helper thread and waits up to `wait` for it.
    /// `Ok` if the group holds them, else why not. On a timeout the client stays with the
    /// thread, which ends with the process.
    fn commit_last_and_wait(&mut self, wait: Duration) -> Result<(), String> {
        let (Some(tpl), Some(consumer)) = (self.last.take(), self.consumer.take()) else { return Ok(()) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("final-offset-commit".into())
            .spawn(move || {
                let result = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync);
                let _ = tx.send(result.map_err(|e| e.to_string()));
                drop(consumer);
            })
            .map_err(|e| e.to_string())?;
        match rx.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {wait:?} (Kafka unreachable?)")),
        }
    }
}

impl Drop for OffsetCommitter {
    fn drop(&mut self) {
        if let Err(e) = self.commit_last_and_wait(FINAL_COMMIT_WAIT) {
            tracing::warn!(error = %e, "the final consumer-group offset commit failed (the manifest is unaffected; the group's lag is stale until a later run commits)");
        }
    }
}
