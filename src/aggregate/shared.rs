//! What the loader and the writer of one worker share: both run on the worker's thread, one
//! after the other, and own the same partitions (one exchange routes to both).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::AggTable;
use super::key::{Agg, AggKey};
use crate::contract::EventTime;
use crate::epoch::Epoch;

/// A partition of an aggregate table: the table and the start of its hour (windowed tables) or
/// day (`vehicle_latest`).
pub type Part = (AggTable, EventTime);

/// The state of one worker's partitions.
#[derive(Default)]
pub struct State {
    /// The rows of the partitions in memory, as the writer has applied them (every epoch below
    /// `applied`).
    pub rows: BTreeMap<Part, BTreeMap<AggKey, Agg>>,
    /// The file that holds each owned partition's rows as last written (or as found at start):
    /// its path under the output root.
    pub files: BTreeMap<Part, String>,
    /// The writer has applied the rows of every epoch below this.
    pub applied: Epoch,
    /// Per epoch, the keys whose updates at it were only loads or evictions (no record): their
    /// row changes are not changes of the table, so they do not make a partition dirty.
    pub quiet: BTreeMap<Epoch, BTreeSet<AggKey>>,
    /// Partitions whose rows changed since their file was written, or whose new file is not
    /// durable yet: they cannot leave memory.
    pub unsettled: BTreeSet<Part>,
    /// Partitions that must be written (or, without rows, removed) at the first commit even
    /// without a change: those of a table rebuilt from the stream tables.
    pub rewrite: BTreeSet<Part>,
    /// The partition (day of `last_seen`) that holds each `vehicle_latest` row.
    pub latest_part: BTreeMap<AggKey, Part>,
}

/// A worker's shared state.
#[derive(Clone, Default)]
pub struct Shared(pub Rc<RefCell<State>>);
