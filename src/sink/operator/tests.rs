//! The sink against scripted chunks and commit boundaries, on an in-memory store: objects
//! follow the commits and hours, never the epochs.

use std::sync::mpsc::Receiver;

use timely::dataflow::operators::capture::{Capture, Event};
use timely::dataflow::operators::vec::Input;

use super::*;
use crate::contract::schema::{BatchBuilder, Provenance};
use crate::contract::timestamp::{MICROS_PER_SEC, format_naive};
use crate::contract::{DecodeOptions, Stream as DataStream, decode};
use crate::dataflow::FileKey;
use crate::epoch::EpochClock;
use crate::sink::encode::EncodeOptions;

/// 30-minute epochs: two per hour.
const WINDOW: i64 = 1800 * MICROS_PER_SEC;
const EPOCH: Epoch = Epoch(967_000); // 2025-03-02T04:00:00Z, the start of an hour

/// A chunk of `rows` GPS rows of `epoch` (on time), from partition 0 at offsets `first..`.
fn chunk(epoch: Epoch, first: i64, rows: i64) -> Chunk {
    let clock = EpochClock::new(WINDOW, 0);
    let start = clock.start_of(epoch);
    let mut b = BatchBuilder::new(DataStream::Gps, true);
    for offset in first..first + rows {
        let value = format!(
            r#"{{"id": "00000000-0000-4000-8000-{offset:012x}", "deviceId": "v", "timestamp": "{}", "speed": 50.0, "direction": "North", "vehicleType": "private"}}"#,
            format_naive(start + offset * MICROS_PER_SEC)
        );
        let record = decode(DataStream::Gps, value.as_bytes(), &DecodeOptions::default()).unwrap();
        b.append(&record, Some(Provenance { partition: 0, offset, late: false }));
    }
    let hour = start.floor(HOUR);
    Chunk { key: FileKey { stream: DataStream::Gps, kind: FileKind::Data, hour }, epoch, batch: b.finish().unwrap(), partitions: vec![0] }
}

/// A captured output of the sink.
type Captured<D> = Receiver<Event<Epoch, Vec<D>>>;

/// What the sink reported: per report, its time and its objects' (name, first, last, rows).
type Reported = Vec<(Epoch, Vec<(String, Epoch, Epoch, u64)>)>;

/// Feeds the script (per step: chunks, boundaries sent at the step's epoch, then the epoch the
/// inputs advance to) through a sink with the given target size; returns its reports and how
/// many early cuts it asked for.
fn run(script: Vec<(Vec<Chunk>, Vec<Epoch>, Epoch)>, target_object_size: u64) -> (Reported, usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handle = rt.handle().clone();
    let (reports, requests) = timely::execute_directly(move |worker| {
        let spec = SinkSpec {
            lake: Lake::open("memory://").unwrap(),
            rt: handle,
            run: "t".into(),
            clock: EpochClock::new(WINDOW, 0),
            encode: EncodeOptions::default(),
            part_size: 5 << 20,
            encode_after_rows: 4,
            target_object_size,
            backpressure: Backpressure::default(),
            failure: Failure::default(),
        };
        let (mut chunks_in, mut cuts_in, reports, requests): (_, _, Captured<Report>, Captured<()>) = worker.dataflow::<Epoch, _, _>(|scope| {
            let (chunks_in, chunks) = scope.new_input::<Chunk>();
            let (cuts_in, cuts) = scope.new_input::<Epoch>();
            let written = chunks.write_parquet(cuts, spec);
            (chunks_in, cuts_in, written.reports.capture(), written.requests.capture())
        });
        chunks_in.advance_to(EPOCH);
        cuts_in.advance_to(EPOCH);
        for (chunks, cuts, next) in script {
            let at = *chunks_in.time();
            for c in chunks {
                assert_eq!(c.epoch, at, "a chunk travels at its epoch");
                chunks_in.send(c);
            }
            for b in cuts {
                cuts_in.send(b);
            }
            chunks_in.advance_to(next);
            cuts_in.advance_to(next);
            for _ in 0..50 {
                worker.step();
            }
        }
        drop((chunks_in, cuts_in));
        while worker.step_or_park(Some(std::time::Duration::from_millis(5))) {}
        (reports, requests)
    });
    let mut out: Reported = Vec::new();
    for event in reports.try_iter() {
        if let Event::Messages(t, data) = event {
            for report in data {
                let Report::Files { files, .. } = report else { panic!("the sink reports objects only") };
                let mut files: Vec<_> = files.into_iter().map(|f| (f.path.rsplit('/').next().unwrap().to_owned(), f.epoch, f.last(), f.rows)).collect();
                files.sort();
                out.push((*t.least().expect("a stamped message"), files));
            }
        }
    }
    out.sort();
    let asked = requests.try_iter().filter_map(|e| if let Event::Messages(_, d) = e { Some(d.len()) } else { None }).sum();
    (out, asked)
}

#[test]
fn an_object_spans_the_epochs_of_one_commit_and_one_hour() {
    let e = EPOCH;
    // Two epochs per hour: e and e + 1 in hour h, e + 2 and e + 3 in h + 1, e + 4 in h + 2.
    let script = vec![
        // Epoch e: rows arrive, and the boundary e + 2 is announced ahead of the frontier.
        (vec![chunk(e, 0, 3)], vec![e + 2], e + 1),
        (vec![chunk(e + 1, 100, 2), chunk(e + 1, 200, 3)], vec![], e + 2),
        // e + 1 sealed: the boundary is reached, the commit [.., e + 2) closes.
        (vec![chunk(e + 2, 300, 2)], vec![], e + 3),
        (vec![chunk(e + 3, 400, 1)], vec![], e + 4),
        // e + 4 is the next hour: the data object of h + 1 closes, but the commit goes on until
        // the input ends.
        (vec![chunk(e + 4, 500, 2)], vec![], e + 5),
    ];
    let (reports, asked) = run(script, 128 << 20);
    assert_eq!(asked, 0);
    assert_eq!(
        reports,
        vec![
            (e, vec![(format!("gps_data-e{e:010}-t.parquet"), e, e + 1, 8)]),
            (e + 2, vec![(format!("gps_data-e{:010}-t.parquet", e + 2), e + 2, e + 3, 3), (format!("gps_data-e{:010}-t.parquet", e + 4), e + 4, e + 4, 2)]),
        ]
    );
}

#[test]
fn a_full_object_is_continued_in_a_new_one_and_an_early_cut_is_asked_for() {
    let e = EPOCH;
    // Each chunk of 2,000 rows is > 1 byte: every write fills its object.
    let script = vec![(vec![chunk(e, 0, 2000), chunk(e, 2000, 2000)], vec![], e + 1)];
    let (reports, asked) = run(script, 1);
    assert_eq!(asked, 1, "one request per sealed epoch at most");
    assert_eq!(reports, vec![(e, vec![(format!("gps_data-e{e:010}-t-1.parquet"), e, e, 2000), (format!("gps_data-e{e:010}-t.parquet"), e, e, 2000)])]);
}

#[test]
fn at_most_a_bounded_number_of_objects_are_open_the_least_recently_written_closes_first() {
    let e = EPOCH;
    // Late rows of 70 different event hours in one epoch, then again the first hour's.
    let late = |hour: i64, offset: i64| {
        let mut c = chunk(e, offset, 1);
        c.key = FileKey { stream: DataStream::Gps, kind: FileKind::Late, hour: c.key.hour - (hour + 1) * HOUR };
        c
    };
    let mut chunks: Vec<Chunk> = (0..70).map(|h| late(h, h)).collect();
    chunks.push(late(0, 1000));
    let (reports, _) = run(vec![(chunks, vec![], e + 1)], 128 << 20);
    let [(_, objects)] = reports.as_slice() else { panic!("one commit: {reports:?}") };
    // 70 objects for 70 hours, plus a second one for hour 0 (closed when the 65th opened).
    assert_eq!(objects.len(), 71);
    assert_eq!(objects.iter().map(|o| o.3).sum::<u64>(), 71);
    assert_eq!(objects.iter().filter(|o| o.0.ends_with("-late-t-1.parquet")).count(), 1);
}
