//! One source's metric handles: taken once when the source starts, so that reading costs a
//! local count per record and a few atomic adds per activation, never a label lookup.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::metrics::{Metrics, Outcome};
use crate::contract::{EventTime, Stream};
use crate::epoch::Epoch;
use crate::ownership::PartitionId;

/// How often a source publishes its partitions' gauges (lag, watermark, idle, stalled).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Records and bytes read in one activation, counted locally.
#[derive(Debug, Clone, Copy)]
pub struct ReadCounts {
    /// Per stream (in `Stream::ALL` order) and outcome (in `Outcome::ALL` order).
    pub records: [[u64; 3]; 5],
    /// Value bytes.
    pub bytes: u64,
    /// The least epoch a row was sent at ([`Epoch::MAX`]: none).
    pub least_epoch: Epoch,
}

impl Default for ReadCounts {
    fn default() -> Self {
        ReadCounts { records: [[0; 3]; 5], bytes: 0, least_epoch: Epoch::MAX }
    }
}

impl ReadCounts {
    /// One record of `stream` with `outcome` and `bytes` value bytes, sent at `epoch`.
    #[inline]
    pub fn add(&mut self, stream: Stream, outcome: Outcome, bytes: usize, epoch: Epoch) {
        self.least_epoch = self.least_epoch.min(epoch);
        let o = match outcome {
            Outcome::Ok => 0,
            Outcome::Late => 1,
            Outcome::DeadLetter => 2,
        };
        self.records[stream.index()][o] += 1;
        self.bytes += bytes as u64;
    }
}

/// The gauges of one owned partition, and what they last said.
#[derive(Debug)]
struct PartitionGauges {
    lag: Gauge,
    watermark: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    idle: Gauge,
    stalled: Gauge,
    last_lag: i64,
}

/// What a source publishes about one partition.
#[derive(Debug, Clone, Copy)]
pub struct PartitionState {
    /// Records on the broker beyond the position.
    pub lag: i64,
    /// The partition's watermark, if it has seen data.
    pub watermark: Option<EventTime>,
    /// Caught up (or finished).
    pub idle: bool,
    /// Starved by the stall guard's account.
    pub stalled: bool,
}

/// One source's handles.
#[derive(Debug)]
pub struct SourceMetrics {
    metrics: &'static Metrics,
    records: [[Counter; 3]; 5],
    partitions: HashMap<PartitionId, PartitionGauges>,
    last_publish: Option<Instant>,
    idle: bool,
}

impl SourceMetrics {
    /// Handles for a source owning `owned`; its partitions' gauges exist (at zero) from now on.
    pub fn new(owned: &[PartitionId]) -> Self {
        let metrics = super::metrics();
        let records = Stream::ALL.map(|s| Outcome::ALL.map(|o| metrics.records_of(s, o)));
        let partitions = owned
            .iter()
            .map(|id| {
                let l = metrics.partition_labels(id.stream, id.partition);
                let g = PartitionGauges {
                    lag: metrics.partition_lag.get_or_create_owned(&l),
                    watermark: metrics.partition_watermark.get_or_create_owned(&l),
                    idle: metrics.partition_idle.get_or_create_owned(&l),
                    stalled: metrics.partition_stalled.get_or_create_owned(&l),
                    last_lag: 0,
                };
                g.lag.set(0);
                (*id, g)
            })
            .collect();
        SourceMetrics { metrics, records, partitions, last_publish: None, idle: false }
    }

    /// Adds one activation's counts.
    pub fn read(&self, counts: &ReadCounts) {
        for (s, per) in counts.records.iter().enumerate() {
            for (o, n) in per.iter().enumerate() {
                if *n > 0 {
                    self.records[s][o].inc_by(*n);
                }
            }
        }
        if counts.bytes > 0 {
            self.metrics.bytes_read.inc_by(counts.bytes);
        }
        if counts.least_epoch != Epoch::MAX {
            self.metrics.note_least_sent(counts.least_epoch);
        }
    }

    /// Whether the partitions' gauges are due (every [`PUBLISH_EVERY`]) or `force`d.
    pub fn due(&mut self, force: bool) -> bool {
        if force || self.last_publish.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
            self.last_publish = Some(Instant::now());
            return true;
        }
        false
    }

    /// Publishes the state of partition `id`.
    pub fn partition(&mut self, id: PartitionId, s: PartitionState) {
        let Some(g) = self.partitions.get_mut(&id) else { return };
        let lag = s.lag.max(0);
        self.metrics.add_lag(lag - g.last_lag);
        g.last_lag = lag;
        g.lag.set(lag);
        if let Some(wm) = s.watermark {
            g.watermark.set(wm.micros() as f64 / 1e6);
        }
        g.idle.set(i64::from(s.idle));
        g.stalled.set(i64::from(s.stalled));
    }

    /// Publishes what this source sent and whether all its partitions are idle (for readiness).
    pub fn sent(&mut self, max_sent: crate::epoch::Epoch, all_idle: bool) {
        self.metrics.note_sent(max_sent);
        if all_idle != self.idle {
            self.idle = all_idle;
            super::health().worker_idle(all_idle);
        }
    }
}
