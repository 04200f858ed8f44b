//! The Kafka source: one consumer per worker, manually assigned to the partitions the worker
//! owns, at the offsets the latest manifest says. No consumer-group rebalancing: ownership is
//! decided by [`crate::ownership`], and offsets are committed to the group only for
//! monitoring, after the manifest that makes them true is durable.
//!
//! Each partition gets its own queue (as librdkafka's `split_partition_queue`), read in turn in
//! batches ([`crate::kafka::batch`]), so that a busy partition cannot starve the others and an
//! end-of-partition event can be attributed to its topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};

use super::watch::{ClientStates, EndWatcher};
use super::{Event, Progress, Reader, SourceError};
use crate::kafka::batch::BatchQueue;
use crate::kafka::{KafkaOptions, log_client_error, throttle};
use crate::ownership::{Offset, PartitionId};

/// The reading client's context: [`crate::kafka::Quiet`], and it keeps librdkafka's statistics of the
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

/// How often the reading client reports its statistics (read only for log lines about stalls).
const STATISTICS_EVERY_MS: &str = "5000";

/// One owned partition as the reader sees it.
struct ReadPartition {
    id: PartitionId,
    topic: String,
    /// Its own queue on the current client (see the module doc); `None` once paused and the
    /// client re-created without it.
    queue: Option<BatchQueue<ReaderContext>>,
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
    /// The reading client's settings, its share of `--kafka-prefetch` included; a re-created
    /// client gets the same.
    config: ClientConfig,
}

impl KafkaReader {
    /// Assigns `owned` partitions at their start offsets (`None`: the beginning). An offset that
    /// retention has deleted in the meantime restarts at the earliest one still held
    /// (`auto.offset.reset=earliest`). `workers` readers of the process share its prefetch
    /// budget ([`KafkaOptions::reader_config`]).
    pub fn new(opts: &KafkaOptions, owned: &[(PartitionId, Option<Offset>)], client_id: &str, workers: usize) -> Result<Self, SourceError> {
        let ids: Vec<PartitionId> = owned.iter().map(|(id, _)| *id).collect();
        let ends = EndWatcher::start(opts, &ids, client_id)?;
        let states = Arc::new(ClientStates::default());
        let starts: Vec<(PartitionId, KafkaOffset)> =
            owned.iter().map(|(id, start)| (*id, start.map_or(KafkaOffset::Beginning, |o| KafkaOffset::Offset(o.get())))).collect();
        let config = opts.reader_config(workers, owned.len());
        let (consumer, queues) = Self::connect(opts, &config, client_id, &states, &starts)?;
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
                next: start.map_or(0, Offset::get),
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
            config,
        })
    }

    /// A client with `config` assigned to `starts`, with a queue of its own per partition, in
    /// that order.
    #[allow(clippy::type_complexity)]
    fn connect(
        opts: &KafkaOptions,
        config: &ClientConfig,
        client_id: &str,
        states: &Arc<ClientStates>,
        starts: &[(PartitionId, KafkaOffset)],
    ) -> Result<(Arc<BaseConsumer<ReaderContext>>, Vec<BatchQueue<ReaderContext>>), SourceError> {
        let consumer: Arc<BaseConsumer<ReaderContext>> = Arc::new(
            config.clone().set("client.id", client_id).set("statistics.interval.ms", STATISTICS_EVERY_MS).create_with_context(ReaderContext(states.clone()))?,
        );
        let mut tpl = TopicPartitionList::new();
        for (id, offset) in starts {
            tpl.add_partition_offset(&opts.topic(id.stream), id.partition, *offset)?;
        }
        consumer.assign(&tpl)?;
        let mut queues = Vec::new();
        for (id, _) in starts {
            let topic = opts.topic(id.stream);
            let q = BatchQueue::partition(&consumer, &topic, id.partition)
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
            let Some(queue) = part.queue.as_mut() else { continue };
            let id = part.id;
            let mut taken = 0;
            let mut last = None;
            let mut troubled = false;
            queue.consume(per_queue, Duration::ZERO, |m| match m.error() {
                None => {
                    f(Event::Record { id, offset: Offset(m.offset()), payload: m.payload() });
                    last = Some(m.offset());
                    taken += 1;
                }
                Some(RDKafkaErrorCode::PartitionEOF) => {
                    f(Event::Caught { id });
                    taken += 1;
                }
                Some(code) => {
                    // Fetch errors are transient: librdkafka retries; we report and go on.
                    troubled = true;
                    let e = KafkaError::MessageConsumption(code);
                    if let Some(suppressed) = throttle(&e) {
                        tracing::warn!(partition = %id, error = %e, detail = m.error_text(), suppressed, "kafka fetch error (librdkafka retries by itself)");
                    }
                }
            });
            if troubled {
                self.troubled_since.get_or_insert_with(Instant::now);
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
                    KafkaOffset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                    _ => None,
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        self.parts
            .iter()
            .filter(|p| !p.paused)
            .map(|p| {
                // Corrected for librdkafka's batch API, which counts an end-of-partition event
                // as a message and so moves the position one past the end.
                let client = positions.get(&(p.topic.clone(), p.id.partition)).map(|&o| p.queue.as_ref().map_or(o, |q| q.position(o)));
                let position = client.map_or(p.next, |o| o.max(p.next));
                let end = self.ends.end(p.id);
                Progress { id: p.id, position: Offset(position), end: end.map(|e| e.offset), fresh: end.is_some_and(|e| e.asked_at > p.delivered_at) }
            })
            .collect()
    }

    fn recover(&mut self) -> Result<(), SourceError> {
        self.recreated += 1;
        let starts: Vec<(PartitionId, KafkaOffset)> = self.parts.iter().filter(|p| !p.paused).map(|p| (p.id, KafkaOffset::Offset(p.next))).collect();
        tracing::warn!(client = %self.client_id, recreated = self.recreated, partitions = starts.len(), "kafka: re-creating the reading client at the next offset of every partition");
        let client_id = format!("{}-r{}", self.client_id, self.recreated);
        let (consumer, queues) = Self::connect(&self.opts, &self.config, &client_id, &self.states, &starts)?;
        let mut queues = queues.into_iter();
        let now = Instant::now();
        let mut old_queues = Vec::with_capacity(self.parts.len());
        for p in &mut self.parts {
            old_queues.extend(std::mem::replace(&mut p.queue, if p.paused { None } else { queues.next() }));
            p.delivered_at = now;
        }
        // The old client is closed on a thread of its own: closing a client that is stuck may
        // wait for requests that never complete, and must not hold up the worker.
        let old = std::mem::replace(&mut self.consumer, consumer);
        let closing = std::thread::Builder::new().name(format!("{}-close", self.client_id)).spawn(move || {
            drop(old_queues);
            drop(old);
        });
        if let Err(e) = closing {
            tracing::warn!(error = %e, "kafka: cannot start a thread to close the stalled client; it was closed on the worker thread");
        }
        Ok(())
    }

    fn describe(&self, id: PartitionId) -> String {
        match self.parts.iter().find(|p| p.id == id) {
            Some(p) => self.states.describe(&p.topic, id.partition),
            None => "not owned".to_owned(),
        }
    }
}
