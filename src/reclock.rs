//! Reclocking one partition: Kafka offsets → epochs, deterministically, so that a replay
//! from a manifest reproduces exactly what was committed and nothing else.
//!
//! For a partition `P`, `wm_P = max(max event time seen − lateness, floor)`, where `floor`
//! only rises through *idle advances* (an idle partition must not hold the cluster back).
//! Let `a(r)` be the epoch of `wm_P` just before record `r`; it never decreases along offsets.
//!
//! - an on-time record (`t ≥ wm_P`) is sent at `epoch(t)` (≥ `a(r)`);
//! - a late record (`t < wm_P`) is sent at `a(r)`, flagged late;
//! - a record that does not decode is sent at `a(r)` to the dead-letter output.
//!
//! Every record thus gets a time that depends only on the partition's contents and its
//! recorded idle advances. Once epochs `< e0` are committed, a record is already in the lake
//! iff its time is `< e0`: that is the whole skip rule on replay.
//!
//! To commit through epoch `e`, a manifest stores per partition a [`ResumeState`]: a position
//! before which every record has a time `≤ e` (the least of: the first offset with `a > e`,
//! and the first on-time record held for an epoch `> e`), the watermark inputs at that
//! position, and the idle advances recorded at or after it.

use std::collections::{BTreeMap, VecDeque};

use crate::contract::EventTime;
use crate::epoch::{Epoch, EpochClock};
use crate::ownership::{Offset, PartitionId};

/// Reading position and watermark inputs just before a given offset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The next offset to read.
    pub offset: Offset,
    /// Greatest event time of a valid record before `offset`.
    pub max_event_time: Option<EventTime>,
    /// Watermark floor from idle advances before `offset`.
    pub floor: Option<EventTime>,
}

/// An idle advance: before reading `offset`, the watermark floor rose to `floor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Advance {
    /// Applies before the record at this offset.
    pub offset: Offset,
    /// The new floor (floors combine by `max`, so re-applying one is harmless).
    pub floor: EventTime,
}

/// What a manifest keeps of a partition: enough to resume it exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumeState {
    /// The partition the state belongs to.
    pub id: PartitionId,
    /// Where to resume.
    pub position: Position,
    /// Idle advances at or after `position.offset`, to replay at their offsets.
    pub advances: Vec<Advance>,
    /// No record at or after this offset was committed. Where the partition's own epoch was
    /// still `≤ e` (it was idle or finished), records from here on would be classified below
    /// the committed epochs; the watermark floor is lifted to the first uncommitted epoch at
    /// this offset, so that they are neither skipped nor sent behind the frontier.
    pub committed_until: Offset,
}

/// How a record was classified, with the epoch it is sent at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// On time, in the epoch of its own event time.
    OnTime(Epoch),
    /// Behind the watermark: sent at the partition's current epoch.
    Late(Epoch),
    /// Undecodable: sent at the partition's current epoch.
    Dead(Epoch),
}

impl Class {
    /// The epoch the record is sent at.
    pub fn epoch(self) -> Epoch {
        match self {
            Class::OnTime(e) | Class::Late(e) | Class::Dead(e) => e,
        }
    }
}

/// The reclocking state of one partition.
#[derive(Debug, Clone)]
pub struct PartitionClock {
    id: PartitionId,
    clock: EpochClock,
    pos: Position,
    /// Recorded advances not yet passed by any resume position.
    advances: Vec<Advance>,
    /// Advances from a manifest still to be replayed.
    pending: VecDeque<Advance>,
    /// `(a, position)` each time `a` rose (and the starting point).
    crossings: VecDeque<(Epoch, Position)>,
    /// Per epoch `> ` last pruned, the position before its first on-time record.
    open: BTreeMap<Epoch, Position>,
    committed_below: Epoch,
    /// From the manifest: at this offset, lift the floor to `committed_below` (see
    /// [`ResumeState::committed_until`]); `None` once done.
    lift_at: Option<Offset>,
}

impl PartitionClock {
    /// Starts a partition from a manifest's state (or from `start_offset` if it has none);
    /// records with an epoch `< committed_below` are already committed and will be skipped.
    pub fn resume(id: PartitionId, clock: EpochClock, state: Option<&ResumeState>, start_offset: Offset, committed_below: Epoch) -> Self {
        let (pos, advances, lift_at) = match state {
            Some(s) => (s.position.clone(), s.advances.clone(), Some(s.committed_until)),
            None => (Position { offset: start_offset, max_event_time: None, floor: None }, Vec::new(), None),
        };
        let mut pc = PartitionClock {
            id,
            clock,
            pos,
            pending: advances.iter().copied().collect(),
            advances,
            crossings: VecDeque::new(),
            open: BTreeMap::new(),
            committed_below,
            lift_at,
        };
        pc.apply_pending(pc.pos.offset);
        pc.lift(pc.pos.offset);
        pc.crossings.push_back((pc.epoch(), pc.pos.clone()));
        pc
    }

    /// The partition this clock reclocks.
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// The next offset to read.
    pub fn next_offset(&self) -> Offset {
        self.pos.offset
    }

    /// The current watermark.
    pub fn watermark(&self) -> Option<EventTime> {
        self.clock.watermark(self.pos.max_event_time, self.pos.floor)
    }

    /// `a` for the next record: the epoch of the current watermark.
    pub fn epoch(&self) -> Epoch {
        self.clock.epoch_of_watermark(self.watermark())
    }

    fn apply_pending(&mut self, upto: Offset) {
        while let Some(adv) = self.pending.front().copied() {
            if adv.offset > upto {
                break;
            }
            self.pending.pop_front();
            self.pos.floor = Some(self.pos.floor.map_or(adv.floor, |f| f.max(adv.floor)));
        }
    }

    /// Lifts the floor to the first uncommitted epoch once reading reaches `lift_at`.
    fn lift(&mut self, upto: Offset) {
        let Some(at) = self.lift_at else { return };
        if at > upto {
            return;
        }
        self.lift_at = None;
        let floor = self.clock.start_of(self.committed_below);
        if self.clock.epoch_of_watermark(self.watermark()) < self.committed_below {
            self.pos.floor = Some(self.pos.floor.map_or(floor, |f| f.max(floor)));
            self.advances.push(Advance { offset: at, floor });
        }
    }

    fn note_crossing(&mut self, before: Epoch) {
        let now = self.epoch();
        if now > before {
            self.crossings.push_back((now, self.pos.clone()));
        }
    }

    /// Reads the record at `offset` with its event time (`None`: it did not decode).
    /// Returns its class, or `None` when it is already committed and must be skipped.
    pub fn observe(&mut self, offset: Offset, event_time: Option<EventTime>) -> Option<Class> {
        debug_assert!(offset >= self.pos.offset, "offsets go forward");
        self.apply_pending(offset);
        let before_lift = self.epoch();
        self.lift(offset);
        self.note_crossing(before_lift);
        let a = self.epoch();
        let wm = self.watermark();
        let before = Position { offset, ..self.pos.clone() };
        let class = match event_time {
            None => Class::Dead(a),
            Some(t) if wm.is_some_and(|w| t < w) => Class::Late(a),
            Some(t) => {
                let e = self.clock.epoch_of(t);
                self.open.entry(e).or_insert(before);
                self.pos.max_event_time = Some(self.pos.max_event_time.map_or(t, |m| m.max(t)));
                Class::OnTime(e)
            }
        };
        self.pos.offset = offset.next();
        self.note_crossing(a);
        (class.epoch() >= self.committed_below).then_some(class)
    }

    /// Raises the floor so that this (idle) partition's epoch is at least `to`. Records the
    /// advance for the manifest. Returns whether anything changed.
    pub fn advance_idle(&mut self, to: Epoch) -> bool {
        self.apply_pending(self.pos.offset);
        let before_lift = self.epoch();
        self.lift(self.pos.offset);
        self.note_crossing(before_lift);
        let a = self.epoch();
        if to <= a {
            return false;
        }
        let floor = self.clock.start_of(to);
        self.pos.floor = Some(self.pos.floor.map_or(floor, |f| f.max(floor)));
        self.advances.push(Advance { offset: self.pos.offset, floor });
        self.note_crossing(a);
        true
    }

    /// The state that lets a restart resume exactly, once epochs `≤ e` are committed.
    pub fn resume_state(&self, e: Epoch) -> ResumeState {
        self.resume_state_range(e, Some(e))
    }

    /// A state valid for committing through any `e` in `[lo, hi]` (`hi = None`: any `e ≥ lo`,
    /// for a partition that will read nothing more). Valid provided that every record read
    /// after this call gets an epoch `> hi` — which the source guarantees by handing this out
    /// when its capability moves to `hi + 1`: the position is the one for `lo` (the earliest,
    /// so every record before it has an epoch `≤ lo ≤ e`), the advances recorded so far
    /// reproduce every classification up to now, and `committed_until` is the first offset
    /// whose records get an epoch `> hi`.
    pub fn resume_state_range(&self, lo: Epoch, hi: Option<Epoch>) -> ResumeState {
        let crossing_after = |e: Epoch| self.crossings.iter().find(|(a, _)| *a > e).map(|(_, p)| p).unwrap_or(&self.pos);
        let position = self
            .open
            .range(lo + 1..)
            .map(|(_, p)| p)
            .chain(std::iter::once(crossing_after(lo)))
            .min_by_key(|p| p.offset)
            .expect("at least the crossing")
            .clone();
        let committed_until = hi.map_or(self.pos.offset, |h| crossing_after(h).offset);
        let advances = self.advances.iter().chain(self.pending.iter()).filter(|a| a.offset >= position.offset).copied().collect();
        ResumeState { id: self.id, position, advances, committed_until }
    }

    /// Forgets what no later resume state can need, once a state for `e` was handed out.
    pub fn prune(&mut self, e: Epoch) {
        let keep_from = self.resume_state(e).position.offset;
        // Without a crossing past `e`, the current position is the fallback (see resume_state).
        self.crossings.retain(|(a, _)| *a > e);
        self.open = self.open.split_off(&(e + 1));
        self.advances.retain(|a| a.offset >= keep_from);
    }
}

#[cfg(test)]
mod tests;
