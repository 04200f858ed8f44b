use super::*;
use crate::contract::Stream;
use proptest::prelude::*;

const MIN: i64 = 60_000_000;

/// The instant `n` minutes after the Unix epoch.
fn mins(n: i64) -> crate::contract::EventTime {
    crate::contract::EventTime(n * MIN)
}

fn clock() -> EpochClock {
    EpochClock::new(MIN, 2 * MIN)
}

fn id() -> PartitionId {
    PartitionId { stream: Stream::Gps, partition: 3 }
}

#[test]
fn classifies_on_time_late_and_dead() {
    let mut p = PartitionClock::resume(id(), clock(), None, Offset(0), Epoch(0));
    assert_eq!(p.observe(Offset(0), Some(mins(10))), Some(Class::OnTime(Epoch(10))));
    assert_eq!(p.epoch(), Epoch(8), "watermark is 2 minutes behind");
    assert_eq!(p.observe(Offset(1), Some(mins(9))), Some(Class::OnTime(Epoch(9))), "within lateness");
    assert_eq!(p.observe(Offset(2), Some(mins(7))), Some(Class::Late(Epoch(8))), "behind the watermark: sent at a(r)");
    assert_eq!(p.observe(Offset(3), None), Some(Class::Dead(Epoch(8))));
    assert_eq!(p.observe(Offset(7), Some(mins(20))), Some(Class::OnTime(Epoch(20))), "offset gaps are fine");
    assert_eq!(p.next_offset(), Offset(8));
    assert_eq!(p.epoch(), Epoch(18));
}

#[test]
fn idle_advance_moves_the_epoch_and_is_recorded() {
    let mut p = PartitionClock::resume(id(), clock(), None, Offset(5), Epoch(0));
    assert_eq!(p.epoch(), Epoch(0));
    assert!(p.advance_idle(Epoch(30)));
    assert!(!p.advance_idle(Epoch(29)));
    assert_eq!(p.epoch(), Epoch(30));
    assert_eq!(p.observe(Offset(5), Some(mins(29))), Some(Class::Late(Epoch(30))));
    let s = p.resume_state(Epoch(29));
    assert_eq!(s.position.offset, Offset(5), "the crossing into epoch 30 happened at offset 5");
    assert_eq!(s.advances, vec![Advance { offset: Offset(5), floor: mins(30) }]);
}

#[test]
fn new_data_after_a_final_commit_is_not_skipped() {
    // A partition whose watermark lags: its epoch is 8 while epoch 10 was committed.
    let mut p = PartitionClock::resume(id(), clock(), None, Offset(0), Epoch(0));
    p.observe(Offset(0), Some(mins(10)));
    let s = p.resume_state(Epoch(10));
    assert_eq!((s.position.offset, s.committed_until), (Offset(1), Offset(1)));
    let mut q = PartitionClock::resume(id(), clock(), Some(&s), Offset(0), Epoch(11));
    assert_eq!(q.epoch(), Epoch(11), "lifted to the first uncommitted epoch");
    assert_eq!(q.observe(Offset(1), Some(mins(9))), Some(Class::Late(Epoch(11))));
    assert_eq!(q.observe(Offset(2), Some(mins(12))), Some(Class::OnTime(Epoch(12))));
    assert_eq!(q.resume_state(Epoch(11)).position.floor, Some(mins(11)), "the lift is part of later states");
}

#[test]
fn resume_state_holds_back_for_open_epochs() {
    let mut p = PartitionClock::resume(id(), clock(), None, Offset(0), Epoch(0));
    p.observe(Offset(0), Some(mins(10))); // on time, epoch 10, a = 0 before
    p.observe(Offset(1), Some(mins(13))); // a = 8 before
    p.observe(Offset(2), Some(mins(14))); // a = 11 before → now 12
    // Committing through 11: epoch 13's record (offset 1) is still open, so resume at 1.
    let s = p.resume_state(Epoch(11));
    assert_eq!(s.position, Position { offset: Offset(1), max_event_time: Some(mins(10)), floor: None });
    // Committing through 14: everything read so far has an epoch ≤ 14; a is 12 ≤ 14: current position.
    assert_eq!(p.resume_state(Epoch(14)).position.offset, Offset(3));
}

/// How a record's event time relates to the partition's clock `t` in a generated history.
#[derive(Debug, Clone, Copy)]
enum When {
    /// No event time (the record is dead).
    Missing,
    /// This many minutes (3–30) before `t`: usually behind the watermark, so late.
    MinutesBehind(i64),
    /// This many seconds (0–100) before `t`: on time or just within lateness.
    SecondsBehind(i64),
}

/// One step of a generated history: maybe an idle advance first, then one record.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// An idle advance to the epoch of `t` plus 0–3, made before the record (8 % of steps).
    idle: Option<i64>,
    /// Seconds (0–50) the clock `t` moves before the record.
    dt_secs: i64,
    /// The record's event time.
    event_time: When,
    /// Whether the next offset is skipped (an offset gap, 10 % of steps).
    gap: bool,
}

fn step() -> impl Strategy<Value = Step> {
    let event_time = prop_oneof![
        1 => Just(When::Missing),
        1 => (3..=30i64).prop_map(When::MinutesBehind),
        8 => (0..=100i64).prop_map(When::SecondsBehind),
    ];
    (prop::option::weighted(0.08, 0..=3i64), 0..=50i64, event_time, prop::bool::weighted(0.1)).prop_map(|(idle, dt_secs, event_time, gap)| Step {
        idle,
        dt_secs,
        event_time,
        gap,
    })
}

/// A script entry: (offset, event time or `None`, `None`) for a record, (offset, `None`,
/// `Some(epoch)`) for an idle advance to `epoch` made when the next offset is `offset`.
type Script = Vec<(i64, Option<crate::contract::EventTime>, Option<Epoch>)>;

/// Lays `steps` out as a script starting at 100 minutes and offset 0; returns the script and
/// the offset after its last record.
fn script_of(steps: &[Step]) -> (Script, i64) {
    let mut t = 100 * MIN;
    let mut script = Script::new();
    let mut offset = 0;
    for s in steps {
        if let Some(ahead) = s.idle {
            script.push((offset, None, Some(Epoch((t / MIN) as u64 + ahead as u64))));
        }
        t += s.dt_secs * 1_000_000;
        let et = match s.event_time {
            When::Missing => None,
            When::MinutesBehind(m) => Some(mins(0) + (t - m * MIN)),
            When::SecondsBehind(secs) => Some(mins(0) + (t - secs * 1_000_000)),
        };
        script.push((offset, et, None));
        offset += 1 + i64::from(s.gap);
    }
    (script, offset)
}

/// How many records arrive after a restart, per replayed commit point.
const NEW_AFTER_RESTART: usize = 20;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A random partition history (60–139 records, offset gaps, dead and late records, idle
    /// advances), processed in one go, then cut at every commit point and replayed from the
    /// resume state: the union must be every record exactly once, with the same classification.
    /// `new_minutes` are the event times (minutes after 100) of records that arrive after a
    /// restart; the `k`th commit point takes the 20 starting at `7 k` (cyclically), so that
    /// consecutive commit points see different arrivals (7 is prime to the length, 60).
    #[test]
    fn replay_from_any_commit_is_exactly_once(
        steps in prop::collection::vec(step(), 60..140),
        new_minutes in prop::collection::vec(-60..=600i64, 3 * NEW_AFTER_RESTART),
    ) {
        let (script, offset) = script_of(&steps);
        let mut full = PartitionClock::resume(id(), clock(), None, Offset(0), Epoch(0));
        let mut classes: BTreeMap<i64, Class> = BTreeMap::new();
        let mut states: Vec<(Epoch, ResumeState, i64)> = Vec::new();
        let mut last_e = None;
        for &(off, et, adv) in &script {
            match adv {
                Some(to) => {
                    full.advance_idle(to);
                }
                None => {
                    classes.insert(off, full.observe(Offset(off), et).unwrap());
                }
            }
            // Emit a state whenever the partition's epoch passes a new one, as the source does.
            // A state for `e` is only handed out once no later record can get an epoch ≤ e.
            // Like the source, hand out one state valid for the whole range [lo, hi] that the
            // capability jumped over; check it for the lowest, a middle and the highest epoch.
            let Some(hi) = full.epoch().prev() else { continue };
            if last_e.is_none_or(|l| hi > l) {
                let lo = last_e.map_or(Epoch::ZERO, Epoch::next);
                let state = full.resume_state_range(lo, Some(hi));
                for e in [lo, lo + hi.since(lo) / 2, hi] {
                    states.push((e, state.clone(), full.next_offset().get()));
                }
                full.prune(hi);
                last_e = Some(hi);
            }
        }
        let max_epoch = classes.values().map(|c| c.epoch()).max().unwrap();
        let final_state = full.resume_state_range(last_e.map_or(Epoch::ZERO, Epoch::next), None);
        for e in [max_epoch, max_epoch + 3] {
            states.push((e, final_state.clone(), full.next_offset().get()));
        }
        for (k, (e, state, emitted_at)) in states.into_iter().enumerate() {
            let mut replay = PartitionClock::resume(id(), clock(), Some(&state), Offset(0), e + 1);
            let mut again: BTreeMap<i64, Class> = BTreeMap::new();
            for &(off, et, adv) in &script {
                if adv.is_none() && off >= state.position.offset.get() {
                    if let Some(c) = replay.observe(Offset(off), et) {
                        again.insert(off, c);
                    }
                }
            }
            let committed: Vec<i64> = classes.iter().filter(|(_, c)| c.epoch() <= e).map(|(o, _)| *o).collect();
            let expected: Vec<i64> = classes.iter().filter(|(_, c)| c.epoch() > e).map(|(o, _)| *o).collect();
            prop_assert_eq!(again.keys().copied().collect::<Vec<_>>(), expected, "commit through {}: replay gives exactly the uncommitted records", e);
            // Records that arrive after everything above was read (new data after a restart)
            // are never taken for committed ones, and never fall behind the frontier.
            for (i, off) in (offset + 1..offset + 1 + NEW_AFTER_RESTART as i64).enumerate() {
                let et = Some(mins(100 + new_minutes[(k * 7 + i) % new_minutes.len()]));
                let c = replay.observe(Offset(off), et);
                prop_assert!(c.is_some(), "commit through {}: new record at {} skipped", e, off);
                let c = c.unwrap();
                prop_assert!(c.epoch() > e, "new record at epoch {} ≤ committed {}", c.epoch(), e);
            }
            // Up to where the state was taken, the replay classifies exactly alike; after it,
            // idle advances made later in the first run may differ, but only for records that
            // were not committed (their epochs stay > e either way).
            for (o, c) in &again {
                prop_assert!(c.epoch() > e);
                if *o < emitted_at {
                    prop_assert_eq!(*c, classes[o], "commit through {}, offset {}", e, o);
                }
            }
            prop_assert!(committed.iter().all(|o| *o < state.position.offset.get() || classes[o].epoch() <= e));
            prop_assert!(committed.iter().all(|o| !again.contains_key(o)), "no duplicates");
        }
    }
}
