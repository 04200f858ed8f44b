//! The loader, as a stream method: `updates.load_aggregates(spec, shared)`, in front of the
//! differential collection. It decides which partitions' rows are in memory.
//!
//! In: the updates of the partitions this worker owns (after the exchange), at their epochs.
//! Out: the same updates, preceded where needed by rows read from the tables, and the
//! retractions that take partitions out of memory.
//!
//! - **Start**: the state of [`super::restore::initial`] — rows of the partitions within the
//!   horizon (loaded: not changes) or recomputed from the stream tables (rebuilt: changes) — is
//!   sent at the first uncommitted epoch, before any update. Updates wait until it is read.
//! - **A partition not in memory** that has a file: its updates wait (with their capabilities)
//!   while the file is read, then the file's rows go out at the earliest waiting epoch, followed
//!   by the updates. So a record far behind the watermark updates the committed row.
//! - **Eviction**: once the watermark (the start of the input frontier's epoch) is
//!   `--aggregate-horizon` past the end of a windowed partition's hour, and the writer has
//!   applied and durably written every change of it, the partition's accumulated aggregates go
//!   out negated ([`Agg::negated`]) at the frontier: its keys accumulate to zero and the writer
//!   drops its rows.
//!
//! Loads and evictions are not changes of the table: the keys they touch at an epoch (and that
//! no record touched at it) are handed to the writer as *quiet* for that epoch before the
//! output frontier passes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::task::JoinHandle;

use super::key::{Agg, AggKey};
use super::restore::{self, Initial};
use super::shared::Shared;
use super::updates::Update;
use super::{AggSpec, AggTable};
use crate::contract::EventTime;
use crate::contract::timestamp::HOUR;
use crate::epoch::Epoch;
use crate::error::{ErrorClass, PipelineError};

/// The stage as a stream method.
pub trait LoadAggregates<'s> {
    /// Loads, passes on and evicts, as the module describes.
    fn load_aggregates(self, spec: AggSpec, shared: Shared) -> Stream<'s, Epoch, Vec<Update>>;
}

type Output = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Update>>>;

/// The activated output.
type Out<'a> = timely::dataflow::operators::generic::OutputBuilderSession<'a, Epoch, timely::container::CapacityContainerBuilder<Vec<Update>>>;

/// A bucket: the unit that is in memory or not (a windowed table's hour; all of
/// `vehicle_latest`).
type Bucket = (AggTable, EventTime);

/// Reading one partition file's rows.
type Load = JoinHandle<Result<Vec<(AggKey, Agg)>, PipelineError>>;

/// Updates waiting for a load, by epoch, with a capability for each epoch.
type Waiting = BTreeMap<Epoch, (Capability<Epoch>, Vec<Update>)>;

/// The loader's state.
struct Loader {
    spec: AggSpec,
    shared: Shared,
    index: usize,
    peers: usize,
    /// Reading the initial state; `None` once it is sent.
    init: Option<JoinHandle<Result<Initial, PipelineError>>>,
    /// Every update that arrived while the initial state is read.
    before_init: Waiting,
    /// Buckets in memory, with the greatest epoch a record updated them at.
    resident: BTreeMap<Bucket, Epoch>,
    /// Buckets whose file is being read, with the updates waiting for it.
    loading: BTreeMap<Bucket, (Load, Waiting)>,
    /// Per epoch: keys loaded or evicted at it, and keys a record updated at it (kept only for
    /// epochs with loads or evictions).
    touched: BTreeMap<Epoch, (BTreeSet<AggKey>, BTreeSet<AggKey>)>,
    /// Held at the input frontier: where loads at start and evictions are sent.
    cap: Option<Capability<Epoch>>,
    /// Some partition is past the horizon but waits for the writer to settle it.
    held_back: bool,
}

impl<'s> LoadAggregates<'s> for Stream<'s, Epoch, Vec<Update>> {
    fn load_aggregates(self, spec: AggSpec, shared: Shared) -> Stream<'s, Epoch, Vec<Update>> {
        let scope: Scope<'s, Epoch> = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let mut builder = OperatorBuilder::new("LoadAggregates".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address.clone());
        let mut input = builder.new_input(self, Pipeline);
        let (out, loaded) = builder.new_output();
        let mut out: Output = OutputBuilder::from(out);

        builder.build(move |mut caps| {
            let mut cap = caps.pop();
            if let Some(c) = cap.as_mut() {
                c.downgrade(&spec.committed_below);
            }
            let task_spec = spec.clone();
            let init = spec.rt.spawn(async move { restore::initial(&task_spec, index, peers).await });
            let mut loader = Loader {
                spec,
                shared,
                index,
                peers,
                init: Some(init),
                before_init: BTreeMap::new(),
                resident: BTreeMap::new(),
                loading: BTreeMap::new(),
                touched: BTreeMap::new(),
                cap,
                held_back: false,
            };
            move |frontiers| {
                let failure = loader.spec.failure.clone();
                if failure.is_set() {
                    return;
                }
                let mut out = out.activate();
                let mut arrived: Vec<(Capability<Epoch>, Vec<Update>)> = Vec::new();
                input.for_each(|c, data| arrived.push((c.retain_least(0).expect("stamped"), std::mem::take(data))));
                let frontier = frontiers[0].frontier().first().copied();
                if let Err(e) = loader.step(&mut out, arrived, frontier) {
                    failure.set(e);
                    return;
                }
                if loader.init.is_some() || !loader.loading.is_empty() {
                    activator.activate_after(Duration::from_millis(2));
                } else if loader.held_back {
                    activator.activate_after(Duration::from_millis(100));
                }
                let _ = (loader.index, loader.peers);
            }
        });
        loaded
    }
}

impl Loader {
    /// One activation: finish the initial state, route what arrived, finish loads, evict, and
    /// hand the writer the quiet keys of the epochs the output frontier is about to pass.
    fn step(&mut self, out: &mut Out<'_>, arrived: Vec<(Capability<Epoch>, Vec<Update>)>, frontier: Option<Epoch>) -> Result<(), PipelineError> {
        if let Some(task) = self.init.as_ref() {
            if !task.is_finished() {
                for (c, data) in arrived {
                    wait(&mut self.before_init, c, data);
                }
                return Ok(());
            }
            let task = self.init.take().expect("checked above");
            let initial = self.spec.rt.block_on(task).map_err(|e| PipelineError::caused(ErrorClass::Definite, "the aggregate restore task failed", e))??;
            self.start(out, initial);
            let waiting = std::mem::take(&mut self.before_init);
            for (_, (c, data)) in waiting {
                self.route(out, c, data)?;
            }
        }
        for (c, data) in arrived {
            self.route(out, c, data)?;
        }
        self.finish_loads(out)?;
        if let Some(f) = frontier {
            self.evict(out, f);
        }
        self.hand_over_quiet(frontier);
        match (frontier, self.cap.as_mut()) {
            (Some(f), Some(c)) if f > *c.time() => c.downgrade(&f),
            (None, _) if self.loading.is_empty() => self.cap = None,
            _ => {}
        }
        Ok(())
    }

    /// Sends the initial state at the first uncommitted epoch.
    fn start(&mut self, out: &mut Out<'_>, initial: Initial) {
        let Some(cap) = self.cap.as_ref() else { return };
        let at = *cap.time();
        let Initial { files, loaded, rebuilt, resident, rewrite } = initial;
        {
            let mut s = self.shared.0.borrow_mut();
            s.files = files;
            s.rewrite = rewrite;
        }
        let (quiet, _) = self.touched.entry(at).or_default();
        let mut session = out.session(cap);
        let (n_loaded, n_rebuilt) = (loaded.len(), rebuilt.len());
        for (key, agg) in loaded {
            quiet.insert(key.clone());
            session.give(((key, ()), at, agg));
        }
        for (key, agg) in rebuilt {
            session.give(((key, ()), at, agg));
        }
        for bucket in resident {
            self.resident.insert(bucket, at);
        }
        // vehicle_latest is in memory from the start, wherever its owner is.
        for t in self.spec.tables.tables().iter().filter(|t| !t.windowed()) {
            if super::key::owner(*t, EventTime::UNIX_EPOCH, self.peers) == self.index {
                self.resident.entry((*t, EventTime::UNIX_EPOCH)).or_insert(at);
            }
        }
        if n_loaded + n_rebuilt > 0 {
            tracing::info!(worker = self.index, loaded = n_loaded, rebuilt = n_rebuilt, epoch = at.get(), "aggregate state restored");
        }
    }

    /// Passes `data` on, or holds the updates of buckets that are not in memory while their
    /// files are read.
    fn route(&mut self, out: &mut Out<'_>, cap: Capability<Epoch>, data: Vec<Update>) -> Result<(), PipelineError> {
        let t = *cap.time();
        let mut pass = Vec::with_capacity(data.len());
        for update in data {
            let bucket = update.0.0.bucket_id();
            if let Some((_, waiting)) = self.loading.get_mut(&bucket) {
                wait(waiting, cap.clone(), vec![update]);
                continue;
            }
            if !self.resident.contains_key(&bucket) {
                let file = self.shared.0.borrow().files.get(&bucket).cloned();
                match file {
                    Some(path) => {
                        let (lake, table) = (self.spec.lake.clone(), bucket.0);
                        tracing::debug!(table = table.name(), partition = bucket.1.micros(), path, "loading an aggregate partition that is not in memory");
                        let handle = self.spec.rt.spawn(async move { restore::load_file(&lake, table, &path).await });
                        let mut waiting = BTreeMap::new();
                        wait(&mut waiting, cap.clone(), vec![update]);
                        self.loading.insert(bucket, (handle, waiting));
                        continue;
                    }
                    None => {
                        self.resident.insert(bucket, t);
                    }
                }
            }
            self.record(&update);
            pass.push(update);
        }
        if !pass.is_empty() {
            out.session(&cap).give_container(&mut pass);
        }
        Ok(())
    }

    /// Notes that a record updated `update`'s key at its epoch.
    fn record(&mut self, update: &Update) {
        let (key, t) = (&update.0.0, update.1);
        if let Some(last) = self.resident.get_mut(&key.bucket_id()) {
            *last = (*last).max(t);
        }
        if let Some((_, recorded)) = self.touched.get_mut(&t) {
            recorded.insert(key.clone());
        }
    }

    /// Sends the rows of every partition file that has been read, then the updates that waited
    /// for it.
    fn finish_loads(&mut self, out: &mut Out<'_>) -> Result<(), PipelineError> {
        let done: Vec<Bucket> = self.loading.iter().filter(|(_, (h, _))| h.is_finished()).map(|(b, _)| *b).collect();
        for bucket in done {
            let (handle, waiting) = self.loading.remove(&bucket).expect("listed above");
            let rows = self.spec.rt.block_on(handle).map_err(|e| PipelineError::caused(ErrorClass::Definite, "an aggregate load task failed", e))??;
            let Some((&first, (cap, _))) = waiting.first_key_value() else { continue };
            let (quiet, _) = self.touched.entry(first).or_default();
            let n = rows.len();
            let mut session = out.session(cap);
            for (key, agg) in rows {
                quiet.insert(key.clone());
                session.give(((key, ()), first, agg));
            }
            drop(session);
            tracing::debug!(table = bucket.0.name(), partition = bucket.1.micros(), rows = n, epoch = first.get(), "aggregate partition loaded back");
            self.resident.insert(bucket, first);
            for (_, (cap, data)) in waiting {
                for u in &data {
                    self.record(u);
                }
                let mut data = data;
                out.session(&cap).give_container(&mut data);
            }
        }
        Ok(())
    }

    /// Takes the windowed partitions that are settled and past the horizon out of memory.
    fn evict(&mut self, out: &mut Out<'_>, frontier: Epoch) {
        let Some(cap) = self.cap.as_ref() else { return };
        let watermark = self.spec.clock.start_of(frontier);
        let horizon = self.spec.horizon_us();
        let shared = self.shared.0.borrow();
        let past: Vec<(Bucket, Epoch)> = self
            .resident
            .iter()
            .filter(|((t, hour), _)| t.windowed() && hour.micros().saturating_add(HOUR).saturating_add(horizon) <= watermark.micros())
            .map(|(b, l)| (*b, *l))
            .collect();
        let due: Vec<Bucket> = past
            .iter()
            .filter(|(bucket, last)| *last < shared.applied && !shared.unsettled.contains(bucket) && !shared.rewrite.contains(bucket))
            .map(|(b, _)| *b)
            .collect();
        // Past the horizon but not settled yet (the writer has not applied or made durable its
        // last change): look again shortly, even if no input or progress wakes this operator.
        self.held_back = due.len() < past.len();
        if due.is_empty() {
            return;
        }
        let cap = cap.delayed(&frontier);
        let (quiet, _) = self.touched.entry(frontier).or_default();
        let mut session = out.session(&cap);
        let mut keys = 0;
        for bucket in &due {
            if let Some(rows) = shared.rows.get(bucket) {
                for (key, agg) in rows {
                    quiet.insert(key.clone());
                    session.give(((key.clone(), ()), frontier, agg.negated()));
                    keys += 1;
                }
            }
        }
        drop(session);
        drop(shared);
        for bucket in &due {
            self.resident.remove(bucket);
        }
        tracing::debug!(worker = self.index, partitions = due.len(), keys, epoch = frontier.get(), "aggregate partitions left memory");
    }

    /// Hands the writer the quiet keys of every epoch the output frontier will pass: below the
    /// input frontier, with no update waiting at or below it.
    fn hand_over_quiet(&mut self, frontier: Option<Epoch>) {
        let waiting_from = self.loading.values().filter_map(|(_, w)| w.keys().next().copied()).min();
        let limit = [frontier, waiting_from].into_iter().flatten().min();
        let done: Vec<Epoch> = self.touched.keys().copied().filter(|e| limit.is_none_or(|l| *e < l)).collect();
        if done.is_empty() {
            return;
        }
        let mut shared = self.shared.0.borrow_mut();
        for e in done {
            let (quiet, recorded) = self.touched.remove(&e).expect("listed above");
            let quiet: BTreeSet<AggKey> = quiet.difference(&recorded).cloned().collect();
            if !quiet.is_empty() {
                shared.quiet.insert(e, quiet);
            }
        }
    }
}

/// Adds `data` at `cap`'s epoch to `waiting`.
fn wait(waiting: &mut Waiting, cap: Capability<Epoch>, mut data: Vec<Update>) {
    let t = *cap.time();
    waiting.entry(t).or_insert_with(|| (cap, Vec::new())).1.append(&mut data);
}
