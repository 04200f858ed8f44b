//! One worker of the process: its partitions, its reader, and the dataflow built from them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::aggregate::AggSpec;
use crate::cli::run::{RunConfig, SourceConfig};
use crate::commit::cut::CutSpec;
use crate::commit::manifest::Manifest;
use crate::commit::offsets::OffsetCommitter;
use crate::commit::operator::{CommitSpec, CommitSummary};
use crate::contract::DecodeOptions;
use crate::dataflow::Backpressure;
use crate::epoch::Epoch;
use crate::error::{ErrorClass, Failure, PipelineError};
use crate::lake::Lake;
use crate::ownership::{self, Offset, PartitionId};
use crate::reclock::{PartitionClock, ResumeState};
use crate::sink::encode::EncodeOptions;
use crate::sink::operator::SinkSpec;
use crate::source::Reader;
use crate::source::batches::EpochBatches;
use crate::source::embedded::EmbeddedReader;
use crate::source::kafka::KafkaReader;
use crate::source::operator::{OwnedPartition, SourceSpec};

/// The input's partitions, where reading starts in those no manifest knows, and where it stops.
pub(super) struct Partitions {
    /// Every partition of the five topics (or virtual partitions of the simulator).
    pub(super) all: Vec<PartitionId>,
    /// The first offset the broker still holds, per partition.
    pub(super) lows: HashMap<PartitionId, Offset>,
    /// Where reading stops (`--until-caught-up`, the embedded journey); empty: it does not.
    pub(super) stops: HashMap<PartitionId, Offset>,
}

/// What every worker of the process shares.
pub(super) struct Process {
    pub(super) cfg: RunConfig,
    pub(super) lake: Lake,
    pub(super) rt: tokio::runtime::Handle,
    /// This process's run id, part of every object name.
    pub(super) run: String,
    pub(super) prefix: String,
    /// Epochs below this are committed.
    pub(super) first_epoch: Epoch,
    /// Resume states of the latest manifest.
    pub(super) states: HashMap<PartitionId, ResumeState>,
    pub(super) partitions: Partitions,
    /// Process 0's claim (or, elsewhere, the latest manifest): the committer's predecessor.
    pub(super) claim: Option<Manifest>,
    /// The newest manifest before this run's claim: what the aggregate tables are loaded as of.
    pub(super) previous: Option<Manifest>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) failure: Failure,
    /// Shared by the process's sinks and sources (chunks stay in their process).
    pub(super) backpressure: Backpressure,
    pub(super) started: Instant,
    /// Process 0: where the committer (worker 0) hands durable manifests to the Delta
    /// publisher; taken by that worker.
    pub(super) publish: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Manifest>>>,
}

/// Builds the dataflow of one worker and steps it until it completes or the process fails;
/// returns what it committed (worker 0 is the committer).
pub(super) fn run_worker(worker: &mut timely::worker::Worker, p: &Process) -> CommitSummary {
    let (cfg, failure) = (&p.cfg, &p.failure);
    let index = worker.index();
    let owned = ownership::owned(&p.partitions.all, index, worker.peers());
    let heartbeat = crate::observe::health().heartbeat(index % cfg.threads);
    let Some(reader) = reader(p, index, &owned) else { return CommitSummary::default() };
    crate::observe::health().assigned();
    let partitions: Vec<OwnedPartition> = owned
        .iter()
        .map(|id| OwnedPartition {
            clock: PartitionClock::resume(*id, cfg.clock, p.states.get(id), p.partitions.lows.get(id).copied().unwrap_or(Offset::ZERO), p.first_epoch),
            stop: cfg.until_caught_up.then(|| p.partitions.stops.get(id).copied().unwrap_or(Offset::ZERO)),
        })
        .collect();
    let offsets = match (&cfg.source, index) {
        (SourceConfig::Kafka(k), 0) => OffsetCommitter::new(k).map_err(|e| tracing::warn!(error = %e, "no consumer-group offset commits")).ok(),
        _ => None,
    };
    let summary = Rc::new(RefCell::new(CommitSummary::default()));
    let source = SourceSpec {
        worker: index,
        committed_below: p.first_epoch,
        partitions,
        reader,
        decode: DecodeOptions { max_value_bytes: cfg.max_value_bytes, not_before: cfg.not_before, ..DecodeOptions::default() },
        max_future: Some(cfg.max_future),
        shutdown: p.shutdown.clone(),
        budget: 4096,
        batches: EpochBatches::new(cfg.clock, 1024, &p.prefix),
        stall: cfg.stall,
        backpressure: p.backpressure.clone(),
        failure: failure.clone(),
    };
    let sink = SinkSpec {
        lake: p.lake.clone(),
        rt: p.rt.clone(),
        run: format!("{}{index:02x}", p.run),
        clock: cfg.clock,
        encode: EncodeOptions { codec: cfg.compression, ..EncodeOptions::default() },
        part_size: 8 << 20,
        encode_after_rows: 1024,
        target_object_size: cfg.target_object_size,
        backpressure: p.backpressure.clone(),
        failure: failure.clone(),
    };
    let committer = CommitSpec {
        lake: p.lake.clone(),
        rt: p.rt.clone(),
        run: p.run.clone(),
        clock: cfg.clock,
        topic_prefix: p.prefix.clone(),
        previous: p.claim.clone(),
        offsets,
        publish: if index == 0 { p.publish.lock().unwrap_or_else(|e| e.into_inner()).take() } else { None },
        summary: summary.clone(),
        failure: failure.clone(),
        cluster: Some(crate::commit::manifest::ClusterShape { processes: cfg.processes, threads: cfg.threads }),
        aggregates: cfg.aggregates.tables().to_vec(),
    };
    let aggregates = (!cfg.aggregates.is_empty()).then(|| AggSpec {
        tables: cfg.aggregates.clone(),
        lake: p.lake.clone(),
        rt: p.rt.clone(),
        run: format!("{}{index:02x}", p.run),
        clock: cfg.clock,
        horizon: cfg.aggregate_horizon,
        committed_below: p.first_epoch,
        previous: p.previous.clone(),
        encode: EncodeOptions { codec: cfg.compression, ..EncodeOptions::default() },
        failure: failure.clone(),
    });
    let cut = CutSpec { leader: index == 0, interval: cfg.commit_interval, committed_below: p.first_epoch };
    worker.dataflow::<Epoch, _, _>(|scope| crate::dataflow::build(scope, cfg.threads, source, cut, sink, committer, aggregates));
    tracing::debug!(worker = index, ms = p.started.elapsed().as_millis() as u64, "start-up: worker running");
    crate::dataflow::step_until_done_or_failed(worker, failure, Duration::from_millis(100), &heartbeat);
    summary.borrow().clone()
}

/// The reader of the `owned` partitions, each from its resume position (else the broker's
/// first offset); `None` after recording the failure if the Kafka client cannot start.
fn reader(p: &Process, index: usize, owned: &[PartitionId]) -> Option<Box<dyn Reader>> {
    match &p.cfg.source {
        SourceConfig::Kafka(k) => {
            let starts: Vec<(PartitionId, Option<Offset>)> =
                owned.iter().map(|id| (*id, p.states.get(id).map(|s| s.position.offset).or_else(|| p.partitions.lows.get(id).copied()))).collect();
            match KafkaReader::new(k, &starts, &format!("citystream-{}-w{index}", p.cfg.process), p.cfg.threads) {
                Ok(r) => Some(Box::new(r)),
                Err(e) => {
                    p.failure.set(PipelineError::caused(ErrorClass::Transient, format!("worker {index}: cannot start reading"), e));
                    None
                }
            }
        }
        SourceConfig::Embedded { fleet, partitions } => {
            let starts: Vec<(PartitionId, Offset)> = owned.iter().map(|id| (*id, p.states.get(id).map_or(Offset::ZERO, |s| s.position.offset))).collect();
            Some(Box::new(EmbeddedReader::new(fleet.clone(), *partitions, &starts)))
        }
    }
}
