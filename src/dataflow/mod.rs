//! The dataflow, top to bottom:
//!
//! ```text
//!  Kafka partitions ──► reclock_source ─chunks@epoch─► parquet_sink ──files@epoch──┐
//!       (owned by        │      ▲                                                  ├─► exchange(0) ─► commit
//!        this worker)    │      └── announcements (broadcast, feedback +1) ◄──┐    │      (manifests)
//!                        ├──────────────────────────────────────────────────────────┘
//!                        └─ resume states@epoch                                │
//!                        └─ announcements ─────────────────────────────────────┘
//! ```
//!
//! The timely time is the epoch. A worker's source holds its capability at the least epoch of
//! its active partitions' watermarks, so the frontier at the committer is the cluster's
//! watermark, and "the frontier passed `e`" means: epoch `e` is sealed everywhere and its
//! objects are durable.
//!
//! The source decodes each value into a record that borrows its strings from the value and
//! appends it straight into the Arrow builders of its object ([`batches`]); what travels to the
//! sink are Arrow batches, so no record is allocated, moved or copied field by field on the way.

pub mod batches;
pub mod commit;
pub mod sink;
pub mod source;

use timely::dataflow::Scope;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback};

use arrow::record_batch::RecordBatch;

use crate::commit::manifest::FileEntry;
use crate::contract::{Micros, Stream};
use crate::epoch::Epoch;
use crate::lake::FileKind;
use crate::reclock::ResumeState;

/// Which object of an epoch rows belong to: one per (stream, kind, hour) per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// The stream.
    pub stream: Stream,
    /// On-time data, late data or dead letters.
    pub kind: FileKind,
    /// Start of the hour that names the object: the epoch's hour, or for late rows their
    /// event time's hour.
    pub hour: Micros,
}

/// Rows on their way to the lake: an Arrow batch of one object of one epoch.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The object.
    pub key: FileKey,
    /// The rows, with provenance columns (data, late) or as dead letters.
    pub batch: RecordBatch,
    /// The Kafka partitions the rows came from, ascending.
    pub partitions: Vec<i32>,
}

/// What workers tell the committer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Report {
    /// Objects durable for the epoch of the message.
    Files {
        /// The objects.
        files: Vec<FileEntry>,
        /// Wall clock (µs since the Unix epoch) when the sink saw the frontier pass the epoch.
        sealed_at_us: i64,
    },
    /// Resume states of one worker's partitions, valid for committing through any epoch in
    /// `[from, to]` (`to = None`: any epoch `≥ from`; the worker finished). Sent at `from`.
    Resume {
        /// First epoch the states are valid for.
        from: Epoch,
        /// Last epoch they are valid for.
        to: Option<Epoch>,
        /// The states.
        states: Vec<ResumeState>,
    },
}

/// A worker's view of its partitions, for idle partitions elsewhere to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Announce {
    /// The worker.
    pub worker: usize,
    /// Increases with every announcement of that worker.
    pub seq: u64,
    /// Least epoch among its active (not caught-up) partitions; `None`: it has none.
    pub active: Option<Epoch>,
    /// Greatest epoch among its caught-up partitions that have a watermark (have seen data).
    pub idle: Option<Epoch>,
}

/// Ends the process on an error the cluster cannot continue after. Timely has no partial
/// recovery: the peers notice the lost connection and stop too, and the supervisor restarts
/// the whole cluster from the last manifest.
pub fn fatal(message: &str) -> ! {
    tracing::error!("{message}");
    eprintln!("error: {message}");
    std::process::exit(crate::run::FATAL_EXIT_CODE)
}

/// Builds the whole pipeline in `scope`.
pub fn build<'s>(scope: Scope<'s, Epoch>, source: source::SourceSpec, sink: sink::SinkSpec, committer: commit::CommitSpec) {
    let (loop_handle, announcements) = scope.feedback::<Vec<Announce>>(1);
    let (chunks, states, announced) = source::reclock_source(scope, source, announcements);
    announced.broadcast().connect_loop(loop_handle);
    let files = sink::parquet_sink(chunks, sink);
    commit::commit(states.concat(files).exchange(|_| 0), committer);
}
