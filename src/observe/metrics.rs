//! The process's Prometheus metrics: one registry, every metric citystream exports, and the
//! named events that update them.
//!
//! Every handle is a `prometheus-client` counter, gauge or histogram: an atomic behind an
//! `Arc`. Hot paths never look a label set up per record: the source keeps its own handles
//! ([`super::source::SourceMetrics`]) and adds what one activation read in a few atomic adds;
//! everything else changes at most once per object, commit or second. A scrape encodes the
//! registry from the HTTP thread while the workers keep updating the atomics: nothing is
//! locked on the dataflow's side except a family's map on the first use of a label set.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::contract::Stream;
use crate::epoch::Epoch;

/// What became of a record read: written on time, written as a late row, or a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// On time.
    Ok,
    /// Behind its partition's watermark: a late row.
    Late,
    /// Not decodable: a dead letter.
    DeadLetter,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Late, Outcome::DeadLetter];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Late => "late",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// Labels of `citystream_records_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RecordLabels {
    /// The stream's name.
    pub stream: String,
    /// ok, late or dead_letter.
    pub outcome: String,
}

/// A stream label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StreamLabel {
    /// The stream's name.
    pub stream: String,
}

/// A Kafka partition's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The topic (prefix + stream name).
    pub topic: String,
    /// The partition number.
    pub partition: String,
}

/// The kind of store request retried.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabel {
    /// `request`: a request `object_store` retried by itself (its log names no method);
    /// `manifest_put`: the committer's own retry of a conditional manifest PUT.
    pub op: String,
}

/// Buckets of `citystream_epoch_seal_seconds`: 50 ms to about 14 minutes, doubling.
const SEAL_BUCKETS: [f64; 15] = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6, 819.2];

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `citystream_records_total{stream,outcome}`.
    pub records: Family<RecordLabels, Counter>,
    /// `citystream_bytes_read_total`: Kafka value bytes read.
    pub bytes_read: Counter,
    /// `citystream_bytes_written_total{stream}`: bytes of durable objects.
    pub bytes_written: Family<StreamLabel, Counter>,
    /// `citystream_objects_written_total{stream}`.
    pub objects_written: Family<StreamLabel, Counter>,
    /// `citystream_partition_lag_records{topic,partition}`.
    pub partition_lag: Family<PartitionLabels, Gauge>,
    /// `citystream_partition_watermark_seconds{topic,partition}`.
    pub partition_watermark: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    /// `citystream_partition_idle{topic,partition}`.
    pub partition_idle: Family<PartitionLabels, Gauge>,
    /// `citystream_partition_stalled{topic,partition}`.
    pub partition_stalled: Family<PartitionLabels, Gauge>,
    /// `citystream_frontier_epoch`.
    pub frontier_epoch: Gauge,
    /// `citystream_last_committed_epoch`.
    pub last_committed_epoch: Gauge,
    /// `citystream_epoch_seal_seconds`.
    pub epoch_seal: Histogram,
    /// `citystream_open_epochs`.
    pub open_epochs: Gauge,
    /// `citystream_store_retries_total{op}`.
    pub store_retries: Family<OpLabel, Counter>,
    /// `citystream_commit_failures_total`.
    pub commit_failures: Counter,
    /// `citystream_fenced`.
    pub fenced: Gauge,
    /// `citystream_manifests_committed_total`.
    pub manifests_committed: Counter,
    /// The greatest epoch any source of this process sent rows at.
    max_sent: AtomicI64,
    /// The sum of the partition lags (for progress lines).
    lag_total: AtomicI64,
    /// The least epoch holding data of this run's first commit with objects (-1: none yet).
    data_from: AtomicI64,
    /// The least epoch any source of this process sent rows at (`i64::MAX`: none yet).
    least_sent: AtomicI64,
    /// When the frontier (as the cutter sees it) first passed each epoch: `(frontier, when)`
    /// for every advance, oldest first. Read by the committer to time each committed epoch.
    seal_times: Mutex<VecDeque<(Epoch, Instant)>>,
    /// The topic prefix in force, for the `topic` label.
    topic_prefix: Mutex<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        let m = Metrics {
            registry: Registry::default(),
            records: Family::default(),
            bytes_read: Counter::default(),
            bytes_written: Family::default(),
            objects_written: Family::default(),
            partition_lag: Family::default(),
            partition_watermark: Family::default(),
            partition_idle: Family::default(),
            partition_stalled: Family::default(),
            frontier_epoch: Gauge::default(),
            last_committed_epoch: Gauge::default(),
            epoch_seal: Histogram::new(SEAL_BUCKETS),
            open_epochs: Gauge::default(),
            store_retries: Family::default(),
            commit_failures: Counter::default(),
            fenced: Gauge::default(),
            manifests_committed: Counter::default(),
            max_sent: AtomicI64::new(-1),
            lag_total: AtomicI64::new(0),
            data_from: AtomicI64::new(-1),
            least_sent: AtomicI64::new(i64::MAX),
            seal_times: Mutex::new(VecDeque::new()),
            topic_prefix: Mutex::new(String::new()),
        };
        m.last_committed_epoch.set(-1);
        // Every series of bounded labels exists from the start, at zero: a family without a
        // series is not exported at all, and a query over a series that appears late misses its
        // first increase.
        for stream in Stream::ALL {
            for outcome in Outcome::ALL {
                m.records_of(stream, outcome);
            }
            let label = StreamLabel { stream: stream.name().to_owned() };
            m.objects_written.get_or_create_owned(&label);
            m.bytes_written.get_or_create_owned(&label);
        }
        for op in ["request", "manifest_put"] {
            m.store_retries.get_or_create_owned(&OpLabel { op: op.to_owned() });
        }
        let r = root.sub_registry_with_prefix("citystream");
        r.register(
            "records",
            "Records read, by stream and outcome (ok: on time; late: behind the watermark, written as late rows; dead_letter: not decodable)",
            m.records.clone(),
        );
        r.register("bytes_read", "Bytes of Kafka values read", m.bytes_read.clone());
        r.register("bytes_written", "Bytes of Parquet objects this process made durable, by stream", m.bytes_written.clone());
        r.register("objects_written", "Parquet objects this process made durable, by stream", m.objects_written.clone());
        r.register(
            "partition_lag_records",
            "Records on the broker beyond this process's read position (high watermark − position), per owned partition",
            m.partition_lag.clone(),
        );
        r.register("partition_watermark_seconds", "Event-time watermark of an owned partition, seconds since the Unix epoch", m.partition_watermark.clone());
        r.register("partition_idle", "1 when an owned partition is caught up (idle: it follows the cluster's watermark)", m.partition_idle.clone());
        r.register(
            "partition_stalled",
            "1 while the stall guard finds an owned partition starved (the broker holds records, none arrive)",
            m.partition_stalled.clone(),
        );
        r.register("frontier_epoch", "The cluster's watermark as an epoch: every epoch below it is sealed", m.frontier_epoch.clone());
        r.register("last_committed_epoch", "Last epoch of the latest commit manifest this process knows (-1: none)", m.last_committed_epoch.clone());
        r.register("epoch_seal_seconds", "Per committed epoch: time from the frontier passing it to its manifest being durable", m.epoch_seal.clone());
        r.register("open_epochs", "Epochs this process has read rows for that are not sealed yet", m.open_epochs.clone());
        r.register("store_retries", "Object-store requests retried after a transient failure", m.store_retries.clone());
        r.register("commit_failures", "Manifest writes that failed (each failed attempt, retried or final)", m.commit_failures.clone());
        r.register("fenced", "1 once another cluster's manifest fenced this one off the output", m.fenced.clone());
        r.register("manifests_committed", "Commit manifests this process made durable", m.manifests_committed.clone());
        Metrics { registry: root, ..m }
    }

    /// The registry, for encoding a scrape.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the topic prefix the `topic` labels use.
    pub fn set_topic_prefix(&self, prefix: &str) {
        *self.topic_prefix.lock().expect("not poisoned") = prefix.to_owned();
    }

    /// The labels of a partition of `stream`.
    pub fn partition_labels(&self, stream: Stream, partition: i32) -> PartitionLabels {
        let prefix = self.topic_prefix.lock().expect("not poisoned");
        PartitionLabels { topic: format!("{prefix}{}", stream.name()), partition: partition.to_string() }
    }

    /// The counter of `stream`'s records with `outcome`.
    pub fn records_of(&self, stream: Stream, outcome: Outcome) -> Counter {
        self.records.get_or_create_owned(&RecordLabels { stream: stream.name().to_owned(), outcome: outcome.label().to_owned() })
    }

    /// A durable object of `stream` with `bytes` bytes.
    pub fn object_written(&self, stream: Stream, bytes: u64) {
        let label = StreamLabel { stream: stream.name().to_owned() };
        self.objects_written.get_or_create(&label).inc();
        self.bytes_written.get_or_create(&label).inc_by(bytes);
    }

    /// A store request was retried (`op`: see [`OpLabel`]).
    pub fn store_retry(&self, op: &str) {
        self.store_retries.get_or_create(&OpLabel { op: op.to_owned() }).inc();
    }

    /// A source of this process sent rows up to epoch `e`.
    pub fn note_sent(&self, e: Epoch) {
        self.max_sent.fetch_max(e.get() as i64, Ordering::Relaxed);
        self.update_open();
    }

    /// The cluster's frontier as this process's cutters see it; `leader`: the cutter of worker
    /// 0, which also notes when each epoch was sealed for [`Metrics::committed`].
    pub fn note_frontier(&self, f: Epoch, leader: bool) {
        if self.frontier_epoch.get() < f.get() as i64 {
            self.frontier_epoch.set(f.get() as i64);
            self.update_open();
        }
        if leader {
            let mut times = self.seal_times.lock().expect("not poisoned");
            if times.back().is_none_or(|(last, _)| *last < f) {
                times.push_back((f, Instant::now()));
            }
        }
    }

    /// A source of this process sent rows at epoch `e` (the least of an activation).
    pub fn note_least_sent(&self, e: Epoch) {
        self.least_sent.fetch_min(e.get() as i64, Ordering::Relaxed);
    }

    /// Epochs sealed from the least epoch this process sent rows at on (the empty epochs before
    /// the first data — every epoch since 1970 for a new lake — are not counted).
    pub fn epochs_sealed(&self) -> u64 {
        let least = self.least_sent.load(Ordering::Relaxed);
        if least == i64::MAX { 0 } else { (self.frontier_epoch.get() - least).max(0) as u64 }
    }

    fn update_open(&self) {
        let open = self.max_sent.load(Ordering::Relaxed) + 1 - self.frontier_epoch.get();
        self.open_epochs.set(open.max(0));
    }

    /// A commit manifest for epochs `[lower, upper)` whose data objects' least epoch is
    /// `least_object_epoch` is durable: one seal-latency observation per epoch (from when the
    /// frontier passed it), counting from the first epoch that holds data in this run — the
    /// epochs before it are the empty stretch before the run's first record (for a new lake,
    /// every epoch since 1970: 29 million one-minute epochs, sealed by one frontier advance) —
    /// and the last committed epoch.
    pub fn committed(&self, lower: Epoch, upper: Epoch, least_object_epoch: Option<Epoch>) {
        self.last_committed_epoch.set(upper.get() as i64 - 1);
        self.manifests_committed.inc();
        if let Some(e) = least_object_epoch
            && self.data_from.load(Ordering::Relaxed) < 0
        {
            self.data_from.store(e.get() as i64, Ordering::Relaxed);
        }
        let from = self.data_from.load(Ordering::Relaxed);
        if from < 0 {
            return;
        }
        let lower = lower.max(Epoch(from as u64));
        let now = Instant::now();
        let mut times = self.seal_times.lock().expect("not poisoned");
        for e in (lower.get()..upper.get()).map(Epoch) {
            // The first advance whose frontier passed e.
            while times.len() > 1 && times.front().is_some_and(|(f, _)| *f <= e) {
                times.pop_front();
            }
            let sealed = times.front().map_or(now, |(_, t)| *t);
            self.epoch_seal.observe(now.saturating_duration_since(sealed).as_secs_f64());
        }
    }

    /// Sum of `citystream_records_total` for `outcome` (all streams).
    pub fn records_sum(&self, outcome: Outcome) -> u64 {
        Stream::ALL.iter().map(|s| self.records_of(*s, outcome).get()).sum()
    }

    /// Sum of a per-stream counter family over the streams.
    pub fn stream_sum(family: &Family<StreamLabel, Counter>) -> u64 {
        Stream::ALL.iter().map(|s| family.get_or_create(&StreamLabel { stream: s.name().to_owned() }).get()).sum()
    }

    /// The sum of every owned partition's lag, as the sources last measured it.
    pub fn lag_sum(&self) -> i64 {
        self.lag_total.load(Ordering::Relaxed)
    }

    /// Adds `delta` to the process's total lag (a source's partition lag changed by it).
    pub fn add_lag(&self, delta: i64) {
        self.lag_total.fetch_add(delta, Ordering::Relaxed);
    }

    /// The text exposition of every metric (OpenMetrics 1.0 text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_committed_epoch_is_observed_once_from_its_seal() {
        let m = Metrics::new();
        let count = |m: &Metrics| {
            let text = m.encode();
            let line = text.lines().find(|l| l.starts_with("citystream_epoch_seal_seconds_count")).unwrap().to_owned();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        m.note_frontier(Epoch(1), false);
        assert_eq!(m.epochs_sealed(), 0);
        m.note_least_sent(Epoch(3));
        m.note_frontier(Epoch(3), true);
        m.note_frontier(Epoch(7), true);
        assert_eq!(m.epochs_sealed(), 4, "from the first data (3) to 7");
        m.committed(Epoch(0), Epoch(2), None);
        assert_eq!(count(&m), 0, "nothing before the first data");
        m.committed(Epoch(2), Epoch(5), Some(Epoch(3)));
        assert_eq!(count(&m), 2, "epochs 3 and 4");
        m.note_frontier(Epoch(9), true);
        m.committed(Epoch(5), Epoch(9), None);
        assert_eq!(count(&m), 6, "every epoch after the first data, empty or not");
        assert_eq!(m.last_committed_epoch.get(), 8);
        assert_eq!(m.manifests_committed.get(), 3);
        m.committed(Epoch(9), Epoch(9), None);
        assert_eq!(count(&m), 6, "a claim commits no epoch");
    }

    #[test]
    fn the_exposition_names_every_metric_with_its_unit_and_type() {
        let m = Metrics::new();
        m.set_topic_prefix("t.");
        m.records_of(Stream::Gps, Outcome::Late).inc_by(3);
        m.partition_lag.get_or_create(&m.partition_labels(Stream::Gps, 2)).set(5);
        m.add_lag(5);
        m.note_sent(Epoch(10));
        m.note_frontier(Epoch(8), false);
        assert_eq!(m.open_epochs.get(), 3);
        let text = m.encode();
        for line in [
            "citystream_records_total{stream=\"gps_data\",outcome=\"late\"} 3",
            "citystream_partition_lag_records{topic=\"t.gps_data\",partition=\"2\"} 5",
            "# TYPE citystream_epoch_seal_seconds histogram",
            "citystream_last_committed_epoch -1",
            "citystream_frontier_epoch 8",
            "# TYPE process_cpu_seconds counter",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert_eq!(m.lag_sum(), 5);
        assert_eq!(m.records_sum(Outcome::Late), 3);
    }
}
