//! Watching a Kafka reader from outside: where each partition ends on the broker, asked by a
//! client of its own, and what the reading client itself says of its partitions (librdkafka's
//! statistics). The stall guard ([`super::stall`]) and the "never idle while behind" rule of the
//! source operator rest on the first; log lines about a stalled partition quote the second.
//!
//! The end offsets come from a separate client on a thread of its own, so that a reading client
//! that stopped fetching cannot hide it: it is the independent witness. Under
//! `isolation.level=read_committed` the broker answers with the last stable offset, the end a
//! reading client of committed data reaches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::SourceError;
use crate::kafka::{KafkaOptions, Quiet};
use crate::ownership::{Offset, PartitionId};

/// How often the end offsets are asked for.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Bound on one end-offset request (a broker that is down makes it wait this long).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often failing end-offset requests are logged.
const LOG_FAILURES_EVERY: Duration = Duration::from_secs(30);

/// Failing rounds after which the end-offset client is re-created.
const RECONNECT_AFTER_ROUNDS: u32 = 5;

/// A partition's end on the broker and when it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// The next offset to be written (the last stable offset under read_committed).
    pub offset: Offset,
    /// When the request was sent: the answer reflects the broker at or after this instant.
    pub asked_at: Instant,
}

/// Asks the broker for the end offsets of some partitions every [`WATCH_EVERY`], on a thread
/// with a client of its own; stops when dropped.
pub struct EndWatcher {
    ends: Arc<Mutex<HashMap<PartitionId, End>>>,
    stop: Arc<AtomicBool>,
}

impl EndWatcher {
    /// Starts watching `partitions`.
    pub fn start(opts: &KafkaOptions, partitions: &[PartitionId], client_id: &str) -> Result<Self, SourceError> {
        let name = format!("{client_id}-ends");
        let connect = {
            let (opts, name) = (opts.clone(), name.clone());
            move || -> Result<BaseConsumer<Quiet>, SourceError> { Ok(opts.client_config().set("client.id", &name).create_with_context(Quiet)?) }
        };
        let mut client = connect()?;
        let ends = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let topics: Vec<(PartitionId, String)> = partitions.iter().map(|id| (*id, opts.topic(id.stream))).collect();
        let (shared, stopped) = (ends.clone(), stop.clone());
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Rounds in a row in which some request failed, and when that was last logged.
                let mut failing = 0u32;
                let mut logged: Option<Instant> = None;
                while !stopped.load(Ordering::Relaxed) {
                    let round = Instant::now();
                    let mut error = None;
                    for (id, topic) in &topics {
                        let asked_at = Instant::now();
                        // A failed request (broker down) leaves the last answer in place: the
                        // stall guard counts nothing while the end is not newer than a delivery.
                        match client.fetch_watermarks(topic, id.partition, ASK_TIMEOUT) {
                            Ok((_, high)) => {
                                shared.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, End { offset: Offset(high), asked_at });
                            }
                            Err(e) => error = Some((*id, e)),
                        }
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    // Serve the client's own events (connection errors while a broker is down),
                    // so that they are logged, throttled, instead of piling up in its queue.
                    for _ in 0..1000 {
                        if client.poll(Duration::ZERO).is_none() {
                            break;
                        }
                    }
                    match error {
                        None => {
                            if failing > 0 && logged.is_some() {
                                tracing::info!(client = %name, after_rounds = failing, "kafka: end offsets answered again");
                            }
                            failing = 0;
                            logged = None;
                        }
                        Some((id, e)) => {
                            failing += 1;
                            if logged.is_none_or(|t| t.elapsed() >= LOG_FAILURES_EVERY) {
                                logged = Some(Instant::now());
                                tracing::warn!(client = %name, partition = %id, error = %e, rounds = failing, "kafka: cannot ask the broker for end offsets (stalls cannot be detected meanwhile)");
                            }
                            // A client that keeps failing is replaced: it must not share a fault
                            // with the reading client it watches.
                            if failing % RECONNECT_AFTER_ROUNDS == 0 {
                                match connect() {
                                    Ok(c) => client = c,
                                    Err(e) => tracing::warn!(client = %name, error = %e, "kafka: cannot re-create the end-offset client"),
                                }
                            }
                        }
                    }
                    while round.elapsed() < WATCH_EVERY && !stopped.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .map_err(|e| SourceError::Client(format!("cannot start the end-offset watcher thread: {e}")))?;
        Ok(EndWatcher { ends, stop })
    }

    /// The latest answer for `id`, if any.
    pub fn end(&self, id: PartitionId) -> Option<End> {
        self.ends.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied()
    }
}

impl Drop for EndWatcher {
    fn drop(&mut self) {
        // The thread sees it within one request; its client goes with it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What librdkafka's statistics say of one partition of the reading client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// `active`, `validate-epoch-wait`, `offset-query`, `stopped`, …
    pub fetch_state: String,
    /// Messages fetched and waiting in the partition's queue.
    pub fetchq_cnt: i64,
    /// Next offset to fetch.
    pub next_offset: i64,
    /// Offset after the last message handed to us.
    pub app_offset: i64,
    /// Offset at which the last end-of-partition event was raised.
    pub eof_offset: i64,
    /// High watermark from the last fetch response.
    pub hi_offset: i64,
    /// Last stable offset from the last fetch response.
    pub ls_offset: i64,
    /// When the statistics were taken.
    pub at: Instant,
}

/// The latest statistics of a reading client, per (topic, partition); filled by its context.
#[derive(Debug, Default)]
pub struct ClientStates {
    partitions: Mutex<HashMap<(String, i32), PartitionState>>,
}

impl ClientStates {
    /// Takes in one statistics report.
    pub fn record(&self, stats: rdkafka::Statistics) {
        let at = Instant::now();
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                if partition < 0 {
                    continue; // librdkafka's internal "unassigned" partition
                }
                let state = PartitionState {
                    fetch_state: p.fetch_state,
                    fetchq_cnt: p.fetchq_cnt,
                    next_offset: p.next_offset,
                    app_offset: p.app_offset,
                    eof_offset: p.eof_offset,
                    hi_offset: p.hi_offset,
                    ls_offset: p.ls_offset,
                    at,
                };
                map.insert((topic.clone(), partition), state);
            }
        }
    }

    /// One line on the client's view of a partition, for a log message.
    pub fn describe(&self, topic: &str, partition: i32) -> String {
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&(topic.to_owned(), partition)) {
            None => "no client statistics yet".to_owned(),
            Some(s) => format!(
                "fetch_state={} fetchq_cnt={} next_offset={} app_offset={} eof_offset={} hi_offset={} ls_offset={} (statistics {} s old)",
                s.fetch_state,
                s.fetchq_cnt,
                s.next_offset,
                s.app_offset,
                s.eof_offset,
                s.hi_offset,
                s.ls_offset,
                s.at.elapsed().as_secs()
            ),
        }
    }
}
