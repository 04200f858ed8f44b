//! `citystream run`: one process of the cluster, from flags to exit code.
//!
//! Before any worker starts: open the output and check access, read the latest manifest
//! (the only truth on resume), discover the partitions, take the stop offsets if asked to,
//! and — in process 0 only — claim the output with a manifest and delete what a crashed run
//! left uncommitted. Then timely runs the dataflow on every worker until the sources finish
//! (`--until-caught-up`, the embedded journey, or SIGTERM/SIGINT).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::run::{RunConfig, SourceConfig};
use crate::commit::manifest::{self, FORMAT, Manifest, ManifestKind};
use crate::commit::offsets::OffsetCommitter;
use crate::commit::operator::{CommitSpec, CommitSummary};
use crate::contract::DecodeOptions;
use crate::epoch::Epoch;
use crate::error::{ErrorClass, Failure, PipelineError};
use crate::lake::{self, Lake};
use crate::ownership::{self, PartitionId};
use crate::reclock::PartitionClock;
use crate::sink::encode::EncodeOptions;
use crate::sink::operator::SinkSpec;
use crate::source::Reader;
use crate::source::batches::EpochBatches;
use crate::source::embedded::{self, EmbeddedReader};
use crate::source::kafka::KafkaReader;
use crate::source::operator::{OwnedPartition, SourceSpec};

/// Exit code of a process stopped by an error the cluster cannot continue after.
pub const FATAL_EXIT_CODE: u8 = 3;

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// What was committed (complete in process 0; empty elsewhere).
    pub committed: CommitSummary,
    /// Objects of crashed runs deleted at start.
    pub garbage_collected: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// The output.
    pub output: String,
    /// First epoch of this run.
    pub first_epoch: Epoch,
    /// Epoch length, microseconds.
    pub window_us: i64,
}

/// A short random id for this process's object names: the standard library's randomly keyed
/// hasher, fed the process id and the wall clock.
fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(crate::clock::now_micros());
    format!("{:08x}", h.finish() as u32)
}

/// Fails fast, naming the address, if this process cannot listen on its own cluster address
/// (entry `-p` of the hostfile): a port in use, or an address of another host. Checked before
/// anything is claimed or written; timely binds the address again right after.
fn check_own_address(cfg: &RunConfig) -> anyhow::Result<()> {
    let Some(addr) = cfg.addresses.get(cfg.process) else { return Ok(()) };
    let entry = cfg.process + 1;
    match std::net::TcpListener::bind(addr.as_str()) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "invalid -h/--hostfile: port in use: {addr} (entry {entry}, the address of process {}) is already in use by another process; stop it or give this process a free port",
            cfg.process
        ),
        Err(e) => bail!(
            "invalid -h/--hostfile: process {} cannot listen on {addr} (entry {entry}): {e}; each process listens on its own entry, which must be an address of this host",
            cfg.process
        ),
    }
}

/// Runs one process of the cluster to completion.
pub fn run(cfg: RunConfig) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    check_own_address(&cfg)?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().thread_name("citystream-io").build().context("starting the I/O runtime")?;
    let lake = Lake::open(&cfg.output)?;
    rt.block_on(lake.check_access())?;
    let previous = rt.block_on(manifest::latest(&lake))?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "start-up: output checked, latest manifest read");
    let prefix = match &cfg.source {
        SourceConfig::Kafka(k) => k.topic_prefix.clone(),
        SourceConfig::Embedded { .. } => String::new(),
    };
    if let Some(m) = &previous {
        if m.clock.window_us != cfg.clock.window_us {
            bail!(
                "invalid --window: the output {} was written with --window {:?}; epochs would not line up (use the same window or a new --output)",
                lake.url,
                Duration::from_micros(m.clock.window_us as u64)
            );
        }
        if m.topic_prefix != prefix {
            bail!(
                "invalid --topic-prefix: the output {} holds topics with prefix {:?}, not {:?} (use a new --output per set of topics)",
                lake.url,
                m.topic_prefix,
                prefix
            );
        }
    }
    let first_epoch = previous.as_ref().map_or(0, |m| m.upper);

    // Partitions, where reading starts if no manifest knows them, and where it stops.
    let (all, lows, stops): (Vec<PartitionId>, HashMap<PartitionId, i64>, HashMap<PartitionId, i64>) = match &cfg.source {
        SourceConfig::Kafka(k) => {
            tracing::info!(brokers = %k.brokers, security = %k.client.describe(), "connecting to Kafka");
            let all = k.discover()?;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, partitions = all.len(), "start-up: partitions discovered");
            let marks = k.watermarks(&all)?;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "start-up: watermarks taken");
            let lows = marks.iter().map(|(id, w)| (*id, w.low)).collect();
            let stops = if cfg.until_caught_up { marks.iter().map(|(id, w)| (*id, w.high)).collect() } else { HashMap::new() };
            (all, lows, stops)
        }
        SourceConfig::Embedded { fleet, partitions } => {
            (embedded::all_partitions(*partitions), HashMap::new(), EmbeddedReader::journey_ends(fleet, *partitions))
        }
    };

    let run = run_id();
    // Process 0 claims the output and clears what crashed runs left uncommitted.
    let mut garbage_collected = 0;
    let mut claim = previous.clone();
    if cfg.process == 0 {
        let m = Manifest {
            format: FORMAT,
            sequence: previous.as_ref().map_or(0, |m| m.sequence) + 1,
            kind: ManifestKind::Claim,
            lower: first_epoch,
            upper: first_epoch,
            clock: cfg.clock,
            topic_prefix: prefix.clone(),
            run: run.clone(),
            written_at: manifest::now_rfc3339(),
            files: Vec::new(),
            partitions: previous.as_ref().map(|m| m.partitions.clone()).unwrap_or_default(),
        };
        rt.block_on(manifest::write(&lake, &m))?;
        garbage_collected = rt.block_on(lake::collect_garbage(&lake, first_epoch))?;
        if garbage_collected > 0 {
            tracing::info!(objects = garbage_collected, "deleted objects a crashed run left uncommitted");
        }
        claim = Some(m);
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "start-up: output claimed");
    }

    // SIGTERM / SIGINT: stop reading, seal, commit, exit 0. Before the workers run (while
    // timely waits for its peers, which is forever if one died) nothing was read: exit at once.
    let shutdown = Arc::new(AtomicBool::new(false));
    let workers_started = Arc::new(AtomicBool::new(false));
    {
        let flag = shutdown.clone();
        let workers_started = workers_started.clone();
        rt.spawn(async move {
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            if !workers_started.load(Ordering::SeqCst) {
                tracing::info!("signal received before the cluster connected: nothing was read, exiting");
                std::process::exit(0);
            }
            tracing::info!("signal received: finishing");
            flag.store(true, Ordering::Relaxed);
        });
    }

    // A panic anywhere (including timely's network threads when a peer dies) ends the
    // process promptly with a non-zero code, so that the supervisor restarts the cluster.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("error: citystream process stopping after a panic (a peer may have died); restart the cluster");
        std::process::exit(i32::from(FATAL_EXIT_CODE));
    }));

    let communication = if cfg.processes > 1 {
        timely::CommunicationConfig::Cluster { threads: cfg.threads, process: cfg.process, addresses: cfg.addresses.clone(), report: false, zerocopy: false }
    } else if cfg.threads > 1 {
        timely::CommunicationConfig::Process(cfg.threads)
    } else {
        timely::CommunicationConfig::Thread
    };
    let config = timely::Config { communication, worker: timely::WorkerConfig::default() };

    let states: Arc<HashMap<PartitionId, crate::reclock::ResumeState>> =
        Arc::new(previous.as_ref().map(|m| m.partitions.iter().map(|s| (s.id, s.clone())).collect()).unwrap_or_default());
    let all = Arc::new(all);
    let stops = Arc::new(stops);
    let lows = Arc::new(lows);
    let handle = rt.handle().clone();
    // The first error any worker of this process meets; every worker stops stepping once set.
    let failure = Failure::default();
    let failure2 = failure.clone();
    // Shared by the process's sinks and sources (one per process: chunks stay in their process).
    let process_backpressure = crate::dataflow::Backpressure::default();
    let cfg2 = cfg.clone();
    let lake2 = lake.clone();
    let guards = timely::execute(config, move |worker| {
        workers_started.store(true, Ordering::SeqCst);
        let cfg = &cfg2;
        let failure = failure2.clone();
        let (index, peers) = (worker.index(), worker.peers());
        let owned = ownership::owned(&all, index, peers);
        let partitions: Vec<OwnedPartition> = owned
            .iter()
            .map(|id| OwnedPartition {
                clock: PartitionClock::resume(*id, cfg.clock, states.get(id), lows.get(id).copied().unwrap_or(0), first_epoch),
                stop: if cfg.until_caught_up { Some(stops.get(id).copied().unwrap_or(0)) } else { None },
            })
            .collect();
        let reader: Box<dyn Reader> = match &cfg.source {
            SourceConfig::Kafka(k) => {
                let starts: Vec<(PartitionId, Option<i64>)> =
                    owned.iter().map(|id| (*id, states.get(id).map(|s| s.position.offset).or_else(|| lows.get(id).copied()))).collect();
                match KafkaReader::new(k, &starts, &format!("citystream-{}-w{index}", cfg.process)) {
                    Ok(r) => Box::new(r),
                    Err(e) => {
                        failure.set(PipelineError::caused(ErrorClass::Transient, format!("worker {index}: cannot start reading"), e));
                        return CommitSummary::default();
                    }
                }
            }
            SourceConfig::Embedded { fleet, partitions: p } => {
                let starts: Vec<(PartitionId, i64)> = owned.iter().map(|id| (*id, states.get(id).map_or(0, |s| s.position.offset))).collect();
                Box::new(EmbeddedReader::new(fleet.clone(), *p, &starts))
            }
        };
        let offsets = match (&cfg.source, index) {
            (SourceConfig::Kafka(k), 0) => OffsetCommitter::new(k).map_err(|e| tracing::warn!(error = %e, "no consumer-group offset commits")).ok(),
            _ => None,
        };
        let backpressure = process_backpressure.clone();
        let summary = Rc::new(RefCell::new(CommitSummary::default()));
        let source = SourceSpec {
            worker: index,
            committed_below: first_epoch,
            partitions,
            reader,
            decode: DecodeOptions { max_value_bytes: cfg.max_value_bytes, not_before: cfg.not_before, ..DecodeOptions::default() },
            max_future: Some(cfg.max_future),
            shutdown: shutdown.clone(),
            budget: 4096,
            batches: EpochBatches::new(cfg.clock, 1024, &prefix),
            stall: cfg.stall,
            backpressure: backpressure.clone(),
            failure: failure.clone(),
        };
        let sink = SinkSpec {
            lake: lake2.clone(),
            rt: handle.clone(),
            run: format!("{run}{index:02x}"),
            clock: cfg.clock,
            encode: EncodeOptions { codec: cfg.compression, ..EncodeOptions::default() },
            part_size: 8 << 20,
            encode_after_rows: 1024,
            backpressure,
            failure: failure.clone(),
        };
        let committer = CommitSpec {
            lake: lake2.clone(),
            rt: handle.clone(),
            run: run.clone(),
            clock: cfg.clock,
            topic_prefix: prefix.clone(),
            previous: claim.clone(),
            offsets,
            summary: summary.clone(),
            failure: failure.clone(),
        };
        worker.dataflow::<Epoch, _, _>(|scope| crate::dataflow::build(scope, cfg.threads, source, sink, committer));
        tracing::debug!(worker = index, ms = started.elapsed().as_millis() as u64, "start-up: worker running");
        crate::dataflow::step_until_done_or_failed(worker, &failure, Duration::from_millis(100));
        summary.borrow().clone()
    })
    .map_err(|e| anyhow::anyhow!("cannot start the cluster (check -h/--hostfile addresses and that the port of process {} is free): {e}", cfg.process))?;
    let mut committed = CommitSummary::default();
    for (i, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(s) if i == 0 => committed = s,
            Ok(_) => {}
            Err(e) => bail!("worker {i} failed: {e}"),
        }
    }
    drop(rt);
    if let Some(e) = failure.take() {
        return Err(e.into());
    }
    Ok(RunReport {
        committed,
        garbage_collected,
        seconds: started.elapsed().as_secs_f64(),
        output: lake.url.clone(),
        first_epoch,
        window_us: cfg.clock.window_us,
    })
}
