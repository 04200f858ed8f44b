use super::*;
use crate::contract::Stream;
use crate::simulate::rng::Rng;

const MIN: i64 = 60_000_000;

fn clock() -> EpochClock {
    EpochClock::new(MIN, 2 * MIN)
}

fn id() -> PartitionId {
    PartitionId { stream: Stream::Gps, partition: 3 }
}

#[test]
fn classifies_on_time_late_and_dead() {
    let mut p = PartitionClock::resume(id(), clock(), None, 0, 0);
    assert_eq!(p.observe(0, Some(10 * MIN)), Some(Class::OnTime(10)));
    assert_eq!(p.epoch(), 8, "watermark is 2 minutes behind");
    assert_eq!(p.observe(1, Some(9 * MIN)), Some(Class::OnTime(9)), "within lateness");
    assert_eq!(p.observe(2, Some(7 * MIN)), Some(Class::Late(8)), "behind the watermark: sent at a(r)");
    assert_eq!(p.observe(3, None), Some(Class::Dead(8)));
    assert_eq!(p.observe(7, Some(20 * MIN)), Some(Class::OnTime(20)), "offset gaps are fine");
    assert_eq!(p.next_offset(), 8);
    assert_eq!(p.epoch(), 18);
}

#[test]
fn idle_advance_moves_the_epoch_and_is_recorded() {
    let mut p = PartitionClock::resume(id(), clock(), None, 5, 0);
    assert_eq!(p.epoch(), 0);
    assert!(p.advance_idle(30));
    assert!(!p.advance_idle(29));
    assert_eq!(p.epoch(), 30);
    assert_eq!(p.observe(5, Some(29 * MIN)), Some(Class::Late(30)));
    let s = p.resume_state(29);
    assert_eq!(s.position.offset, 5, "the crossing into epoch 30 happened at offset 5");
    assert_eq!(s.advances, vec![Advance { offset: 5, floor: 30 * MIN }]);
}

#[test]
fn new_data_after_a_final_commit_is_not_skipped() {
    // A partition whose watermark lags: its epoch is 8 while epoch 10 was committed.
    let mut p = PartitionClock::resume(id(), clock(), None, 0, 0);
    p.observe(0, Some(10 * MIN));
    let s = p.resume_state(10);
    assert_eq!((s.position.offset, s.committed_until), (1, 1));
    let mut q = PartitionClock::resume(id(), clock(), Some(&s), 0, 11);
    assert_eq!(q.epoch(), 11, "lifted to the first uncommitted epoch");
    assert_eq!(q.observe(1, Some(9 * MIN)), Some(Class::Late(11)));
    assert_eq!(q.observe(2, Some(12 * MIN)), Some(Class::OnTime(12)));
    assert_eq!(q.resume_state(11).position.floor, Some(11 * MIN), "the lift is part of later states");
}

#[test]
fn resume_state_holds_back_for_open_epochs() {
    let mut p = PartitionClock::resume(id(), clock(), None, 0, 0);
    p.observe(0, Some(10 * MIN)); // on time, epoch 10, a = 0 before
    p.observe(1, Some(13 * MIN)); // a = 8 before
    p.observe(2, Some(14 * MIN)); // a = 11 before → now 12
    // Committing through 11: epoch 13's record (offset 1) is still open, so resume at 1.
    let s = p.resume_state(11);
    assert_eq!(s.position, Position { offset: 1, max_event_time: Some(10 * MIN), floor: None });
    // Committing through 14: everything read so far has an epoch ≤ 14; a is 12 ≤ 14: current position.
    assert_eq!(p.resume_state(14).position.offset, 3);
}

/// A random partition history, processed in one go, then cut at every commit point and
/// replayed from the resume state: the union must be every record exactly once, with the
/// same classification.
#[test]
fn replay_from_any_commit_is_exactly_once() {
    for seed in 0..200u64 {
        let mut rng = Rng::new(seed);
        let n = 60 + (rng.next_u64() % 80) as i64;
        // Events: (offset, event time or None) and idle advances interleaved.
        let mut t = 100 * MIN;
        let mut script: Vec<(i64, Option<Micros>, Option<Epoch>)> = Vec::new();
        let mut offset = 0;
        for _ in 0..n {
            if rng.chance(0.08) {
                script.push((offset, None, Some((t / MIN) as Epoch + rng.int_inclusive(0, 3) as Epoch)));
            }
            t += rng.int_inclusive(0, 50) * 1_000_000;
            let et = match rng.next_u64() % 10 {
                0 => None,
                1 => Some(t - rng.int_inclusive(3, 30) * MIN),
                _ => Some(t - rng.int_inclusive(0, 100) * 1_000_000),
            };
            script.push((offset, et, None));
            offset += 1 + i64::from(rng.chance(0.1));
        }
        let mut full = PartitionClock::resume(id(), clock(), None, 0, 0);
        let mut classes: BTreeMap<i64, Class> = BTreeMap::new();
        let mut states: Vec<(Epoch, ResumeState, i64)> = Vec::new();
        let mut last_e = None;
        for &(off, et, adv) in &script {
            match adv {
                Some(to) => {
                    full.advance_idle(to);
                }
                None => {
                    classes.insert(off, full.observe(off, et).unwrap());
                }
            }
            // Emit a state whenever the partition's epoch passes a new one, as the source does.
            // A state for `e` is only handed out once no later record can get an epoch ≤ e.
            // Like the source, hand out one state valid for the whole range [lo, hi] that the
            // capability jumped over; check it for the lowest, a middle and the highest epoch.
            let Some(hi) = full.epoch().checked_sub(1) else { continue };
            if last_e.is_none_or(|l| hi > l) {
                let lo = last_e.map_or(0, |l| l + 1);
                let state = full.resume_state_range(lo, Some(hi));
                for e in [lo, lo + (hi - lo) / 2, hi] {
                    states.push((e, state.clone(), full.next_offset()));
                }
                full.prune(hi);
                last_e = Some(hi);
            }
        }
        let max_epoch = classes.values().map(|c| c.epoch()).max().unwrap();
        let final_state = full.resume_state_range(last_e.map_or(0, |l| l + 1), None);
        for e in [max_epoch, max_epoch + 3] {
            states.push((e, final_state.clone(), full.next_offset()));
        }
        for (e, state, emitted_at) in states {
            let mut replay = PartitionClock::resume(id(), clock(), Some(&state), 0, e + 1);
            let mut again: BTreeMap<i64, Class> = BTreeMap::new();
            for &(off, et, adv) in &script {
                if adv.is_none() && off >= state.position.offset {
                    if let Some(c) = replay.observe(off, et) {
                        again.insert(off, c);
                    }
                }
            }
            let committed: Vec<i64> = classes.iter().filter(|(_, c)| c.epoch() <= e).map(|(o, _)| *o).collect();
            let expected: Vec<i64> = classes.iter().filter(|(_, c)| c.epoch() > e).map(|(o, _)| *o).collect();
            assert_eq!(again.keys().copied().collect::<Vec<_>>(), expected, "seed {seed}, commit through {e}: replay gives exactly the uncommitted records");
            // Records that arrive after everything above was read (new data after a restart)
            // are never taken for committed ones, and never fall behind the frontier.
            for off in offset + 1..offset + 21 {
                let et = Some(100 * MIN + rng.int_inclusive(-60, 600) * MIN);
                let c = replay.observe(off, et).unwrap_or_else(|| panic!("seed {seed}, commit through {e}: new record at {off} skipped"));
                assert!(c.epoch() > e, "seed {seed}: new record at epoch {} ≤ committed {e}", c.epoch());
            }
            // Up to where the state was taken, the replay classifies exactly alike; after it,
            // idle advances made later in the first run may differ, but only for records that
            // were not committed (their epochs stay > e either way).
            for (o, c) in &again {
                assert!(c.epoch() > e);
                if *o < emitted_at {
                    assert_eq!(*c, classes[o], "seed {seed}, commit through {e}, offset {o}");
                }
            }
            assert!(committed.iter().all(|o| *o < state.position.offset || classes[o].epoch() <= e));
            assert!(committed.iter().all(|o| !again.contains_key(o)), "no duplicates");
        }
    }
}
