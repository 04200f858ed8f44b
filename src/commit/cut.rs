//! When a commit is cut, as a stream method: `sources.cut_commits(spec)` → commit boundaries.
//!
//! A commit covers the sealed epochs `[lower, upper)`, and every object holds the rows of one
//! commit, so every sink of the cluster has to close its objects at the same epoch boundary:
//! the boundary is decided once, by worker 0, and broadcast. The decision travels *ahead* of the
//! epochs it separates, which is what makes it safe without any further agreement:
//!
//! - worker 0's cutter holds a capability at the sources' frontier `f` (its input is a stream of
//!   the sources, only its frontier is used), so no sink can see the frontier pass `f` before
//!   the cutter lets go of it;
//! - when `--commit-interval` has passed since the last cut, it sends the boundary `f` *at* its
//!   capability's time (`≤ f`), and only then moves the capability on. Timely delivers a message
//!   at time `t` before the receiver's frontier passes `t`, so every sink knows the boundary
//!   `f` before it seals epoch `f`: rows of epochs below `f` go into the objects of this commit,
//!   rows of `f` and later into the next commit's;
//! - a sink that needs a commit early (an object reached `--target-object-size`) asks for one;
//!   the requests come back to the cutter over a feedback edge, and the next boundary is cut
//!   at once.
//!
//! The cutter never holds the frontier back: its capability follows the sources' frontier, one
//! scheduling step behind. When the sources finish, it drops its capability; the sinks then
//! close everything and the committer commits up to the end, so shutdown and
//! `--until-caught-up` commit at once.

use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use crate::epoch::Epoch;

/// Everything the cutter needs.
#[derive(Debug, Clone, Copy)]
pub struct CutSpec {
    /// Whether this worker decides (worker 0); the others only take part in the dataflow.
    pub leader: bool,
    /// Wall-clock time between two cuts (`--commit-interval`).
    pub interval: Duration,
    /// Epochs below this are committed already: the first boundary is above it.
    pub committed_below: Epoch,
}

/// A sink's request for a commit boundary as soon as possible (one of its objects is full).
pub type CutRequest = ();

/// The cutter as a stream method.
pub trait CutCommits<'s> {
    /// Decides the commit boundaries of the cluster: `self` is a stream of the sources (only its
    /// frontier is used), `requests` the sinks' requests for an early cut. The output carries
    /// each boundary at a time no later than the boundary itself.
    fn cut_commits(self, spec: CutSpec, requests: Stream<'s, Epoch, Vec<CutRequest>>) -> Stream<'s, Epoch, Vec<Epoch>>;
}

impl<'s, D: Clone + 'static> CutCommits<'s> for Stream<'s, Epoch, Vec<D>> {
    fn cut_commits(self, spec: CutSpec, requests: Stream<'s, Epoch, Vec<CutRequest>>) -> Stream<'s, Epoch, Vec<Epoch>> {
        let scope: Scope<'s, Epoch> = self.scope();
        let mut builder = OperatorBuilder::new("CutCommits".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address.clone());
        let mut sources = builder.new_input(self, Pipeline);
        let mut asked = builder.new_input(requests, Pipeline);
        let (out, cuts) = builder.new_output();
        let mut out: OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Epoch>>> = OutputBuilder::from(out);

        builder.build(move |mut caps| {
            let mut cap = caps.pop().filter(|_| spec.leader);
            if let Some(c) = cap.as_mut() {
                c.downgrade(&spec.committed_below);
            }
            let mut last = spec.committed_below;
            let mut since = Instant::now();
            let mut requested = false;
            // When the pending wake-up for the next interval is due (one at a time).
            let mut wake_at: Option<Instant> = None;
            move |frontiers| {
                sources.for_each(|_, data| data.clear());
                asked.for_each(|_, data| {
                    requested |= !data.is_empty();
                    data.clear();
                });
                if let Some(&f) = frontiers[0].frontier().first() {
                    crate::observe::metrics().note_frontier(f, spec.leader);
                    crate::observe::health().frontier(f);
                }
                let Some(c) = cap.as_mut() else { return };
                // The sources finished: the sinks close everything, the committer commits it.
                let Some(&f) = frontiers[0].frontier().first() else {
                    cap = None;
                    return;
                };
                if f > last && (requested || since.elapsed() >= spec.interval) {
                    out.activate().session(&*c).give(f);
                    tracing::debug!(boundary = f.get(), requested, "commit cut");
                    last = f;
                    since = Instant::now();
                    requested = false;
                }
                if f > *c.time() {
                    c.downgrade(&f);
                }
                let now = Instant::now();
                if wake_at.is_none_or(|w| w <= now) {
                    let due = spec.interval.saturating_sub(since.elapsed()).max(Duration::from_millis(10));
                    wake_at = Some(now + due);
                    activator.activate_after(due);
                }
            }
        });
        cuts
    }
}
