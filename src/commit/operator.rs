//! The commit stage as a stream method, `reports.commit(spec)`: sealed epochs → manifests, in
//! order, exactly once.
//!
//! In: every worker's reports, exchanged to worker 0 — the commit boundaries of the cutter
//! ([`crate::commit::cut`]), object lists at the first epoch they hold, and partition resume
//! states at the epoch they are valid for. Guarantee: when the input frontier passes `e`, every
//! object holding rows of an epoch `≤ e` is durable and every worker has handed out resume
//! states for `e`; since no object holds epochs on both sides of a boundary, the committer then
//! writes the next manifest of the chain for `[lower, b)`, `b` the greatest boundary at or
//! below the frontier (the end of the input when it is done), with a create-if-absent PUT (one
//! in flight at a time, so commits batch up when the store is slower than the boundaries), and
//! only after it is durable commits the consumer-group offsets and hands the manifest to the
//! Delta publisher ([`crate::delta::publish`]), which adds its objects to the tables. A lost create race means
//! another cluster writes this output: the pipeline stops with that error (a definite
//! [`PipelineError`] in the process's [`Failure`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::offsets::OffsetCommitter;
use crate::commit::manifest::{self, FORMAT, FileEntry, Manifest, ManifestError, ManifestKind};
use crate::dataflow::Report;
use crate::epoch::{Epoch, EpochClock};
use crate::error::{ErrorClass, Failure, PipelineError};
use crate::lake::{FileKind, Lake};
use crate::ownership::{Offset, PartitionId};
use crate::reclock::ResumeState;

/// Everything the committer needs.
pub struct CommitSpec {
    /// Where manifests go.
    pub lake: Lake,
    /// Runs the manifest writes.
    pub rt: Handle,
    /// This cluster's run id.
    pub run: String,
    /// Window and lateness in force.
    pub clock: EpochClock,
    /// Topic prefix in force.
    pub topic_prefix: String,
    /// The latest manifest at start (the cluster's claim).
    pub previous: Option<Manifest>,
    /// Commits consumer-group offsets after each manifest (Kafka only).
    pub offsets: Option<OffsetCommitter>,
    /// Hands each durable manifest to the Delta publisher ([`crate::delta::publish::serve`]).
    pub publish: Option<tokio::sync::mpsc::UnboundedSender<Manifest>>,
    /// Filled in as manifests become durable.
    pub summary: Rc<RefCell<CommitSummary>>,
    /// Where an error that stops the pipeline goes.
    pub failure: Failure,
    /// The cluster's shape, recorded in each manifest.
    pub cluster: Option<manifest::ClusterShape>,
    /// The aggregate tables this run maintains: every commit manifest lists them as current.
    pub aggregates: Vec<crate::aggregate::AggTable>,
}

/// What this run committed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CommitSummary {
    /// Manifests written.
    pub manifests: u64,
    /// Least and greatest epoch whose rows an object holds.
    pub epochs: Option<(Epoch, Epoch)>,
    /// Objects committed (data, late and dead-letter files; not the aggregate tables' files).
    pub objects: u64,
    /// On-time rows per stream (in `Stream::ALL` order).
    pub rows: [u64; 5],
    /// Late rows.
    pub late: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Aggregate files written (one per changed partition and commit).
    pub aggregate_files: u64,
    /// Rows of the aggregate files written (each file holds its partition's rows).
    pub aggregate_rows: u64,
    /// Aggregate files replaced or removed.
    pub aggregate_removed: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds from "the sink saw the frontier pass the manifest's first epoch that has rows"
    /// to "manifest durable", per manifest that committed objects: at most the commit interval
    /// plus the time to finish the objects and the manifest.
    pub seal_latencies: Vec<f64>,
}

impl CommitSummary {
    fn add(&mut self, m: &Manifest, latency: Option<f64>) {
        self.manifests += 1;
        self.seal_latencies.extend(latency);
        // The raw objects say which epochs held records; an aggregate file is named for its
        // commit's first epoch, which may hold none.
        let raw = || m.files.iter().filter(|f| f.kind != FileKind::Aggregate);
        let lo = raw().map(|f| f.epoch).min();
        let hi = raw().map(FileEntry::last).max();
        if let (Some(lo), Some(hi)) = (lo, hi) {
            self.epochs = Some(self.epochs.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
        for f in &m.files {
            if f.kind == FileKind::Aggregate {
                self.aggregate_files += 1;
            } else {
                self.objects += 1;
                self.bytes += f.bytes;
            }
            match f.kind {
                FileKind::Data => self.rows[f.stream.index()] += f.rows,
                FileKind::Late => self.late += f.rows,
                FileKind::DeadLetter => self.dead_letters += f.rows,
                FileKind::Aggregate => self.aggregate_rows += f.rows,
            }
        }
        self.aggregate_removed += m.removed.len() as u64;
    }
}

/// The committer as a stream method: `reports.commit(spec)`.
pub trait Commit {
    /// Commits the epochs the reports' frontier passes, in manifests. Only the worker that
    /// receives the reports (worker 0, after an exchange) writes anything.
    fn commit(self, spec: CommitSpec);
}

impl<'s> Commit for Stream<'s, Epoch, Vec<Report>> {
    fn commit(self, spec: CommitSpec) {
        build_committer(self, spec)
    }
}

fn build_committer<'s>(reports: Stream<'s, Epoch, Vec<Report>>, spec: CommitSpec) {
    let scope: Scope<'s, Epoch> = reports.scope();
    let mut builder = OperatorBuilder::new("Commit".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(reports, Pipeline);

    builder.build_reschedule(move |_caps| {
        let CommitSpec { lake, rt, run, clock, topic_prefix, previous, mut offsets, publish, summary, failure, cluster, aggregates } = spec;
        let mut lower = previous.as_ref().map_or(Epoch::ZERO, |m| m.upper);
        let mut sequence = previous.as_ref().map_or(0, |m| m.sequence);
        let mut states: BTreeMap<PartitionId, ResumeState> = previous.map(|m| m.partitions.into_iter().map(|s| (s.id, s)).collect()).unwrap_or_default();
        // Per epoch: its objects, and when a sink first saw the frontier pass it.
        let mut files: BTreeMap<Epoch, (Vec<FileEntry>, i64)> = BTreeMap::new();
        // Per epoch: the aggregate files its objects replace.
        let mut removed: BTreeMap<Epoch, Vec<String>> = BTreeMap::new();
        // Per partition: states by the first epoch they are valid for, with the last one.
        let mut resume: BTreeMap<PartitionId, BTreeMap<Epoch, (Option<Epoch>, ResumeState)>> = BTreeMap::new();
        // `from` epochs of states received but not yet in a manifest.
        let mut uncommitted_from: std::collections::BTreeSet<Epoch> = std::collections::BTreeSet::new();
        let mut max_seen: Option<Epoch> = None;
        // Commit boundaries the cutter decided, not yet committed.
        let mut cuts: std::collections::BTreeSet<Epoch> = std::collections::BTreeSet::new();
        // The manifest being written, with when its first epoch was sealed.
        type InFlight = (JoinHandle<Result<(), ManifestError>>, Manifest, Option<i64>);
        let mut in_flight: Option<InFlight> = None;

        move |frontiers| {
            if failure.is_set() {
                return false;
            }
            input.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                max_seen = Some(max_seen.map_or(t, |m| m.max(t)));
                for report in data.drain(..) {
                    match report {
                        Report::Cut { upper } => {
                            cuts.insert(upper);
                        }
                        Report::Files { files: f, removed: gone, sealed_at_us } => {
                            let (all, at) = files.entry(t).or_insert((Vec::new(), sealed_at_us));
                            all.extend(f);
                            *at = (*at).min(sealed_at_us);
                            if !gone.is_empty() {
                                removed.entry(t).or_default().extend(gone);
                            }
                        }
                        Report::Resume { from, to, states: s } => {
                            uncommitted_from.insert(from);
                            for state in s {
                                resume.entry(state.id).or_default().insert(from, (to, state));
                            }
                        }
                    }
                }
            });

            if let Some((handle, _, _)) = &in_flight {
                if !handle.is_finished() {
                    activator.activate_after(Duration::from_millis(2));
                    return true;
                }
                let (handle, m, first_sealed) = in_flight.take().expect("checked above");
                match rt.block_on(handle) {
                    Ok(Ok(())) => {
                        tracing::info!(sequence = m.sequence, lower = m.lower.get(), upper = m.upper.get(), objects = m.files.len(), "manifest committed");
                        let latency = first_sealed.map(|t| (crate::clock::now_micros() - t) as f64 / 1e6);
                        summary.borrow_mut().add(&m, latency);
                        // Dead letters of records without a usable time sit at the epoch the
                        // source was in when they arrived (0 before its first watermark): only
                        // data objects say where the run's data starts.
                        let least_data_epoch = m.files.iter().filter(|f| matches!(f.kind, FileKind::Data | FileKind::Late)).map(|f| f.epoch).min();
                        crate::observe::metrics().committed(m.lower, m.upper, least_data_epoch);
                        crate::observe::health().committed();
                        lower = m.upper;
                        sequence = m.sequence;
                        if let Some(committer) = offsets.as_mut() {
                            let offs: Vec<(PartitionId, Offset)> = m.partitions.iter().map(|s| (s.id, s.position.offset)).collect();
                            committer.commit(&offs);
                        }
                        if let Some(tables) = &publish {
                            // A closed channel means the publisher stopped with an error, which
                            // it reports itself; the manifest is durable either way.
                            let _ = tables.send(m);
                        }
                    }
                    Ok(Err(e @ ManifestError::Lake(_))) => {
                        crate::observe::metrics().commit_failures.inc();
                        let message = format!("committing epochs [{}, {}): {}", m.lower, m.upper, lake.gave_up());
                        failure.set(PipelineError::caused(ErrorClass::Transient, message, e));
                        return false;
                    }
                    Ok(Err(e)) => {
                        // A lost create race: another cluster writes this output.
                        crate::observe::metrics().commit_failures.inc();
                        crate::observe::metrics().fenced.set(i64::from(matches!(e, ManifestError::Conflict { .. })));
                        failure.set(PipelineError::caused(ErrorClass::Definite, format!("committing epochs [{}, {})", m.lower, m.upper), e));
                        return false;
                    }
                    Err(e) => {
                        failure.set(PipelineError::caused(ErrorClass::Definite, "the manifest task failed", e));
                        return false;
                    }
                }
            }

            // Everything below the frontier is sealed and durable, but objects hold the rows of
            // whole commits: the manifest ends at the greatest boundary below the frontier (and
            // at the end of everything once the input is done).
            let upper = match frontiers[0].frontier().first() {
                Some(&f) => cuts.range(..=f).next_back().copied().unwrap_or(lower),
                None => max_seen.map_or(lower, Epoch::next).max(cuts.last().copied().unwrap_or(lower)).max(lower),
            };
            let anything = files.range(..upper).next().is_some() || uncommitted_from.range(..upper).next().is_some();
            if upper > lower && anything {
                cuts = cuts.split_off(&(upper + 1));
                let later = files.split_off(&upper);
                let sealed = std::mem::replace(&mut files, later);
                let first_sealed = sealed.values().map(|(_, t)| *t).min();
                let committed: Vec<FileEntry> = sealed.into_values().flat_map(|(f, _)| f).collect();
                let later_removed = removed.split_off(&upper);
                let replaced: Vec<String> = std::mem::replace(&mut removed, later_removed).into_values().flatten().collect();
                // For each partition, the state whose range holds upper - 1.
                let e = upper - 1;
                for (id, by_from) in resume.iter_mut() {
                    let Some((&from, (to, state))) = by_from.range(..=e).next_back() else { continue };
                    if to.is_some_and(|t| t < e) {
                        let message = format!("internal error: no resume state of {id} covers epoch {e} (latest covers {from}..={to:?})");
                        failure.set(PipelineError::new(ErrorClass::Definite, message));
                        return false;
                    }
                    states.insert(*id, state.clone());
                    // Earlier states are superseded; this one may still serve later commits.
                    *by_from = by_from.split_off(&from);
                }
                uncommitted_from = uncommitted_from.split_off(&upper);
                let m = Manifest {
                    format: FORMAT,
                    sequence: sequence + 1,
                    kind: ManifestKind::Commit,
                    lower,
                    upper,
                    clock,
                    topic_prefix: topic_prefix.clone(),
                    run: run.clone(),
                    written_at: manifest::now_rfc3339(),
                    files: committed,
                    partitions: states.values().cloned().collect(),
                    cluster,
                    removed: replaced,
                    aggregates: aggregates.clone(),
                };
                let lake = lake.clone();
                let to_write = m.clone();
                let handle = rt.spawn(async move { manifest::write(&lake, &to_write).await });
                in_flight = Some((handle, m, first_sealed));
                activator.activate_after(Duration::from_millis(2));
            }
            in_flight.is_some() || !files.is_empty() || !uncommitted_from.is_empty()
        }
    });
}
