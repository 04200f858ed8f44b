//! The source stage as a scope method, `scope.reclock(spec, announcements)`: Kafka partitions →
//! Arrow batches stamped with their epoch.
//!
//! In: a [`Reader`] over the partitions this worker owns, their [`PartitionClock`]s (resumed
//! from the latest manifest), and the other workers' announcements of their least active
//! epoch. Out ([`Reclocked`]): chunks of rows at their epoch (decoded values appended straight
//! into the builders of their objects, see [`super::batches`]), resume states for the committer,
//! and this worker's own announcements.
//!
//! Guarantees: the data output's capability sits at the least epoch of the owned partitions that
//! are still active, so the cluster frontier *is* the watermark; idle partitions follow the
//! cluster's least active epoch (recorded as idle advances) so they never stall it, and a
//! partition the broker holds unread records for is never idle; each time the capability
//! advances past `e`, the resume states for committing `e` are sent, after every row of the
//! epochs below the new capability; when every owned partition is finished (stop offset reached:
//! `--until-caught-up` or shutdown), final states are sent and all capabilities dropped. The
//! steps themselves are methods of the source state (`src/source/state.rs`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use super::Reader;
use super::batches::EpochBatches;
use super::stall::StallConfig;
use super::state::SourceState;
use crate::contract::DecodeOptions;
use crate::dataflow::{Announce, Backpressure, Chunk, Report};
use crate::epoch::Epoch;
use crate::error::Failure;
use crate::ownership::Offset;
use crate::reclock::PartitionClock;

pub use super::state::{HOLD_REPORTED_AFTER, READ_AHEAD_EPOCHS};

/// One owned partition: its clock and where reading stops (if anywhere).
pub struct OwnedPartition {
    /// Reclocking state.
    pub clock: PartitionClock,
    /// Stop before this offset (`--until-caught-up`: the high watermark at start).
    pub stop: Option<Offset>,
}

/// Everything the source operator needs.
pub struct SourceSpec {
    /// This worker's index.
    pub worker: usize,
    /// Epochs below this are committed; nothing is sent below it.
    pub committed_below: Epoch,
    /// The owned partitions.
    pub partitions: Vec<OwnedPartition>,
    /// Where records come from.
    pub reader: Box<dyn Reader>,
    /// How values are decoded.
    pub decode: DecodeOptions,
    /// Event times later than the wall clock plus this are dead-lettered as implausible
    /// (`--max-future`); `None`: no bound.
    pub max_future: Option<Duration>,
    /// Set on SIGTERM/SIGINT: stop reading, seal and commit what was read.
    pub shutdown: Arc<AtomicBool>,
    /// Events read per activation before yielding to other operators.
    pub budget: usize,
    /// Where decoded rows are built into the batches of their objects.
    pub batches: EpochBatches,
    /// When a partition that delivers nothing although the broker has records for it counts as
    /// stalled (see [`crate::source::stall`]).
    pub stall: StallConfig,
    /// Holds reading back while this process's sinks wait for the store.
    pub backpressure: Backpressure,
    /// Where an error that stops the pipeline goes.
    pub failure: Failure,
}

/// The source's outputs.
pub struct Reclocked<'s> {
    /// Rows at the epoch that commits them.
    pub chunks: Stream<'s, Epoch, Vec<Chunk>>,
    /// Resume states of the partitions, at the first epoch they are valid for.
    pub resume: Stream<'s, Epoch, Vec<Report>>,
    /// This worker's view of its partitions, for the other workers' idle partitions.
    pub announcements: Stream<'s, Epoch, Vec<Announce>>,
}

/// The source stage as a scope method.
pub trait Reclock<'s> {
    /// Reads the partitions of `spec` and stamps every row with its epoch; `announcements` are
    /// the other workers' (fed back from [`Reclocked::announcements`]).
    fn reclock(self, spec: SourceSpec, announcements: Stream<'s, Epoch, Vec<Announce>>) -> Reclocked<'s>;
}

impl<'s> Reclock<'s> for Scope<'s, Epoch> {
    fn reclock(self, spec: SourceSpec, announcements: Stream<'s, Epoch, Vec<Announce>>) -> Reclocked<'s> {
        build_source(self, spec, announcements)
    }
}

type Output<D> = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<D>>>;

fn build_source<'s>(scope: Scope<'s, Epoch>, spec: SourceSpec, announcements: Stream<'s, Epoch, Vec<Announce>>) -> Reclocked<'s> {
    let mut builder = OperatorBuilder::new("ReclockSource".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(announcements, Pipeline);
    let (chunks_out, chunks) = builder.new_output();
    let (reports_out, resume) = builder.new_output();
    let (announce_out, announced) = builder.new_output();
    let mut chunks_out: Output<Chunk> = OutputBuilder::from(chunks_out);
    let mut reports_out: Output<Report> = OutputBuilder::from(reports_out);
    let mut announce_out: Output<Announce> = OutputBuilder::from(announce_out);

    builder.build(move |mut caps| {
        let committed_below = spec.committed_below;
        let failure = spec.failure.clone();
        let mut announce_cap = caps.pop();
        let mut report_cap = caps.pop();
        let mut data_cap = caps.pop();
        for c in [&mut data_cap, &mut report_cap, &mut announce_cap].into_iter().flatten() {
            c.downgrade(&committed_below);
        }
        let mut state = SourceState::new(spec);

        move |_frontiers| {
            input.for_each(|_cap, data| state.hear(data.drain(..)));
            let Some(cap) = data_cap.as_ref().map(|c| *c.time()) else { return };
            if failure.is_set() {
                return;
            }
            state.notice_shutdown();

            let started = Instant::now();
            let mut read = 0;
            if state.reads_now() {
                match state.read(cap) {
                    Ok(n) => read = n,
                    Err(e) => return failure.set(e),
                }
            }
            let progress = state.measure();
            state.pause_finished();

            // Send the chunks that filled up, at their epochs.
            if let Some(c) = data_cap.as_ref() {
                let mut out = chunks_out.activate();
                for (t, chunk) in state.take_ready() {
                    out.session(&c.delayed(&t)).give(chunk);
                }
            }

            let view = state.view();
            state.follow_idle(view);
            state.bound_read_ahead(view);
            if let Err(e) = state.guard_stalls(&progress, view) {
                return failure.set(e);
            }
            state.publish(false);
            if let Some(a) = state.announcement(view)
                && let Some(ac) = announce_cap.as_ref()
            {
                announce_out.activate().session(ac).give(a);
            }

            let advance = state.advance(cap);
            if advance.to > cap || advance.all_finished {
                // Every row of the epochs the capability passes goes out first, at its epoch.
                if let Some(c) = data_cap.as_ref() {
                    let mut out = chunks_out.activate();
                    for (t, chunk) in state.batches.take_below((!advance.all_finished).then_some(advance.to)) {
                        out.session(&c.delayed(&t)).give(chunk);
                    }
                }
                // States valid for committing through any epoch in [cap, to - 1]: every record
                // read from now on gets an epoch ≥ to (see PartitionClock). A finished worker
                // covers [cap, max_sent - 1] like any jump, then hands out its final states from
                // max_sent on: nothing it sent is later, so they resume at the end of what was read.
                let final_from = advance.to;
                let through = if advance.all_finished { (final_from > cap).then(|| final_from - 1) } else { Some(advance.to - 1) };
                if let Some(hi) = through {
                    let states = state.resume_states(cap, Some(hi));
                    if let Some(rc) = report_cap.as_ref() {
                        reports_out.activate().session(rc).give(Report::Resume { from: cap, to: Some(hi), states });
                    }
                }
                if advance.all_finished {
                    if let Some(rc) = report_cap.as_ref() {
                        let states = state.resume_states(final_from, None);
                        reports_out.activate().session(&rc.delayed(&final_from)).give(Report::Resume { from: final_from, to: None, states });
                    }
                    tracing::debug!(worker = state.worker, epoch = cap.get(), "all partitions finished");
                    state.publish(true);
                    data_cap = None;
                    report_cap = None;
                    announce_cap = None;
                    return;
                }
                for c in [&mut data_cap, &mut report_cap, &mut announce_cap].into_iter().flatten() {
                    c.downgrade(&advance.to);
                }
            }

            if read > 0 || started.elapsed() > Duration::from_millis(50) {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(20));
            }
        }
    });
    Reclocked { chunks, resume, announcements: announced }
}

#[cfg(test)]
mod tests;
