//! `citystream run`: one process of the cluster, from flags to exit code.
//!
//! Before any worker starts: open the output and check access, read the latest manifest
//! (the only truth on resume), discover the partitions, take the stop offsets if asked to,
//! and — in process 0 only — claim the output with a manifest and delete what a crashed run
//! left uncommitted. Then timely runs the dataflow on every worker until the sources finish
//! (`--until-caught-up`, the embedded journey, or SIGTERM/SIGINT).

mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::run::{RunConfig, SourceConfig};
use crate::commit::manifest::{self, FORMAT, Manifest, ManifestKind};
use crate::commit::operator::CommitSummary;
use crate::dataflow::Backpressure;
use crate::delta::publish::{self, PublishSummary};
use crate::epoch::Epoch;
use crate::error::{ErrorClass, Failure, PipelineError};
use crate::lake::{self, Lake};
use crate::source::embedded::{self, EmbeddedReader};

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
    /// The `--output` URL written to.
    pub output: String,
    /// First epoch of this run.
    pub first_epoch: Epoch,
    /// Epoch length, microseconds.
    pub window_us: i64,
    /// Wall-clock time between commits (`--commit-interval`).
    pub commit_interval: Duration,
    /// What process 0 published to the Delta tables.
    pub published: Option<PublishSummary>,
    /// What this process read and wrote (every process; `committed` is the cluster's).
    pub process: ProcessTotals,
    /// This process's index (`-p`).
    pub process_index: usize,
    /// Processes in the cluster (`-n`).
    pub processes: usize,
}

/// What one process read and wrote, from its metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcessTotals {
    /// Records read that were on time.
    pub ok: u64,
    /// Records read that were late.
    pub late: u64,
    /// Records read that were dead letters.
    pub dead_letters: u64,
    /// Kafka value bytes read.
    pub bytes_read: u64,
    /// Objects made durable.
    pub objects: u64,
    /// Bytes of those objects.
    pub bytes_written: u64,
}

impl ProcessTotals {
    /// This process's totals so far.
    pub fn now() -> Self {
        use crate::observe::{Metrics, Outcome, metrics};
        let m = metrics();
        ProcessTotals {
            ok: m.records_sum(Outcome::Ok),
            late: m.records_sum(Outcome::Late),
            dead_letters: m.records_sum(Outcome::DeadLetter),
            bytes_read: m.bytes_read.get(),
            objects: Metrics::stream_sum(&m.objects_written),
            bytes_written: Metrics::stream_sum(&m.bytes_written),
        }
    }

    /// Every record read.
    pub fn records(&self) -> u64 {
        self.ok + self.late + self.dead_letters
    }
}

/// A short random id for this process's object names.
fn run_id() -> String {
    format!("{:08x}", crate::clock::random_u64() as u32)
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
    if let Some(addr) = cfg.metrics_addr {
        crate::observe::http::serve(addr)?;
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().thread_name("citystream-io").build().context("starting the I/O runtime")?;
    let lake = Lake::open(&cfg.output)?;
    rt.block_on(lake.check_access())?;
    crate::observe::health().store_answered();
    let previous = rt.block_on(manifest::latest(&lake))?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "start-up: output checked, latest manifest read");
    let prefix = match &cfg.source {
        SourceConfig::Kafka(k) => k.topic_prefix.clone(),
        SourceConfig::Embedded { .. } => String::new(),
    };
    check_resumable(&cfg, previous.as_ref(), &prefix, &lake)?;
    let first_epoch = previous.as_ref().map_or(Epoch::ZERO, |m| m.upper);
    let metrics = crate::observe::metrics();
    metrics.set_topic_prefix(&prefix);
    metrics.last_committed_epoch.set(first_epoch.get() as i64 - 1);
    metrics.note_frontier(first_epoch, false);
    crate::observe::health().expect(cfg.threads, first_epoch);
    let partitions = partitions(&cfg, started)?;

    let run = run_id();
    // Process 0 claims the output and clears what crashed runs left uncommitted.
    let (claim, garbage_collected) = if cfg.process == 0 {
        let (claim, garbage) = claim_output(&rt, &lake, &cfg, previous.as_ref(), &prefix, &run)?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "start-up: output claimed");
        (Some(claim), garbage)
    } else {
        (previous.clone(), 0)
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    let workers_started = Arc::new(AtomicBool::new(false));
    on_signals(&rt, shutdown.clone(), workers_started.clone());

    // A panic anywhere (including timely's network threads when a peer dies) ends the
    // process promptly with a non-zero code, so that the supervisor restarts the cluster.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("error: citystream process stopping after a panic (a peer may have died); restart the cluster");
        std::process::exit(i32::from(FATAL_EXIT_CODE));
    }));

    // Process 0 publishes every durable manifest to the Delta tables, after bringing them up
    // to the claim (republishing what a crash kept from them).
    let failure = Failure::default();
    let (publish_tx, publishing) = match &claim {
        Some(claim) if cfg.process == 0 => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (lake, run, head, failure) = (lake.clone(), run.clone(), claim.sequence, failure.clone());
            let tables = crate::delta::Table::maintained(&cfg.aggregates);
            let task = rt.spawn(async move {
                let result = publish::serve(lake.clone(), run, tables, head, rx).await;
                if let Err(e) = &result {
                    let message = format!("{e}; the manifests are durable and the next start publishes them ({})", lake.gave_up());
                    failure.set(PipelineError::new(ErrorClass::Transient, message));
                }
                result
            });
            (Some(tx), Some(task))
        }
        _ => (None, None),
    };

    let process = Arc::new(worker::Process {
        cfg: cfg.clone(),
        lake: lake.clone(),
        rt: rt.handle().clone(),
        run,
        prefix,
        first_epoch,
        states: previous.as_ref().map(|m| m.partitions.iter().map(|s| (s.id, s.clone())).collect()).unwrap_or_default(),
        partitions,
        claim,
        previous: previous.clone(),
        shutdown,
        failure: failure.clone(),
        backpressure: Backpressure::default(),
        started,
        publish: std::sync::Mutex::new(publish_tx),
    });
    let progress = cfg.until_caught_up.then(crate::observe::progress::RunProgress::start);
    let guards = timely::execute(timely_config(&cfg), move |worker| {
        workers_started.store(true, Ordering::SeqCst);
        worker::run_worker(worker, &process)
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
    // The committer is gone, and with it the publisher's input: wait for the last manifests
    // to reach the tables (unless the run failed: then the next start publishes them).
    let published = match publishing {
        Some(task) if !failure.is_set() => match rt.block_on(task) {
            Ok(Ok(summary)) => Some(summary),
            Ok(Err(_)) => None, // recorded in `failure`
            Err(e) => bail!("the Delta publisher failed: {e}"),
        },
        Some(task) => {
            task.abort();
            None
        }
        None => None,
    };
    drop(progress);
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
        commit_interval: cfg.commit_interval,
        published,
        process: ProcessTotals::now(),
        process_index: cfg.process,
        processes: cfg.processes,
    })
}

/// Refuses to resume an output written with another window or topic prefix: its epochs or
/// partitions would not line up.
fn check_resumable(cfg: &RunConfig, previous: Option<&Manifest>, prefix: &str, lake: &Lake) -> anyhow::Result<()> {
    let Some(m) = previous else { return Ok(()) };
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
    Ok(())
}

/// Every partition of the input, where reading starts in those no manifest knows, and where it
/// stops (`--until-caught-up`: the high watermarks now; the embedded journey: its end).
fn partitions(cfg: &RunConfig, started: Instant) -> anyhow::Result<worker::Partitions> {
    Ok(match &cfg.source {
        SourceConfig::Kafka(k) => {
            tracing::info!(brokers = %k.brokers, security = %k.client.describe(), "connecting to Kafka");
            let all = k.discover()?;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, partitions = all.len(), "start-up: partitions discovered");
            let marks = k.watermarks(&all)?;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "start-up: watermarks taken");
            let lows = marks.iter().map(|(id, w)| (*id, w.low)).collect();
            let stops = if cfg.until_caught_up { marks.iter().map(|(id, w)| (*id, w.high)).collect() } else { HashMap::new() };
            worker::Partitions { all, lows, stops }
        }
        SourceConfig::Embedded { fleet, partitions } => {
            worker::Partitions { all: embedded::all_partitions(*partitions), lows: HashMap::new(), stops: EmbeddedReader::journey_ends(fleet, *partitions) }
        }
    })
}

/// Process 0's claim: the next manifest of the chain, empty, naming this run (a cluster that
/// loses this create race does not start), then the objects crashed runs left uncommitted are
/// deleted. Returns the claim and how many objects were deleted.
fn claim_output(
    rt: &tokio::runtime::Runtime,
    lake: &Lake,
    cfg: &RunConfig,
    previous: Option<&Manifest>,
    prefix: &str,
    run: &str,
) -> anyhow::Result<(Manifest, usize)> {
    let first_epoch = previous.map_or(Epoch::ZERO, |m| m.upper);
    let m = Manifest {
        format: FORMAT,
        sequence: previous.map_or(0, |m| m.sequence) + 1,
        kind: ManifestKind::Claim,
        lower: first_epoch,
        upper: first_epoch,
        clock: cfg.clock,
        topic_prefix: prefix.to_owned(),
        run: run.to_owned(),
        written_at: manifest::now_rfc3339(),
        files: Vec::new(),
        partitions: previous.map(|m| m.partitions.clone()).unwrap_or_default(),
        cluster: Some(manifest::ClusterShape { processes: cfg.processes, threads: cfg.threads }),
        removed: Vec::new(),
        // A claim commits nothing: the aggregates current before it are current after it (on a
        // new lake, every table this run maintains is).
        aggregates: previous.map_or_else(|| cfg.aggregates.tables().to_vec(), |m| m.aggregates.clone()),
    };
    rt.block_on(manifest::write(lake, &m))?;
    let garbage = rt.block_on(lake::collect_garbage(lake, first_epoch))?;
    if garbage > 0 {
        tracing::info!(objects = garbage, "deleted objects a crashed run left uncommitted");
    }
    Ok((m, garbage))
}

/// SIGTERM / SIGINT: stop reading, seal, commit, exit 0. Before the workers run (while timely
/// waits for its peers, which is forever if one died) nothing was read: exit at once.
fn on_signals(rt: &tokio::runtime::Runtime, shutdown: Arc<AtomicBool>, workers_started: Arc<AtomicBool>) {
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
        shutdown.store(true, Ordering::Relaxed);
    });
}

/// timely's configuration for `-w/-n/-p/-h`.
fn timely_config(cfg: &RunConfig) -> timely::Config {
    let communication = if cfg.processes > 1 {
        timely::CommunicationConfig::Cluster { threads: cfg.threads, process: cfg.process, addresses: cfg.addresses.clone(), report: false, zerocopy: false }
    } else if cfg.threads > 1 {
        timely::CommunicationConfig::Process(cfg.threads)
    } else {
        timely::CommunicationConfig::Thread
    };
    timely::Config { communication, worker: timely::WorkerConfig::default() }
}
