//! The dataflow, top to bottom:
//!
//! ```text
//!  Kafka partitions ──► reclock_source ──rows@epoch──► parquet_sink ──files@epoch──┐
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

pub mod commit;
pub mod sink;
pub mod source;

use timely::dataflow::Scope;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback};

use crate::commit::manifest::FileEntry;
use crate::contract::{ErrorClass, Record, Stream};
use crate::epoch::Epoch;
use crate::reclock::ResumeState;

/// A record on its way to the lake.
#[derive(Debug, Clone)]
pub enum Row {
    /// A decoded record.
    Record {
        /// The record.
        record: Record,
        /// Kafka partition.
        partition: i32,
        /// Kafka offset.
        offset: i64,
        /// Whether it arrived behind the watermark.
        late: bool,
    },
    /// A value that did not decode.
    Dead {
        /// Its stream.
        stream: Stream,
        /// Kafka partition.
        partition: i32,
        /// Kafka offset.
        offset: i64,
        /// Error class.
        class: ErrorClass,
        /// Reason naming the field.
        reason: String,
        /// The raw value.
        raw: Vec<u8>,
    },
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
    let (rows, states, announced) = source::reclock_source(scope, source, announcements);
    announced.broadcast().connect_loop(loop_handle);
    let files = sink::parquet_sink(rows, sink);
    commit::commit(states.concat(files).exchange(|_| 0), committer);
}
