//! The Kafka reader against the real broker: re-creating its client (what the stall guard does
//! to a client that stopped fetching) reads on from the next offset of every partition, with
//! nothing skipped and nothing read twice, and the broker's end offsets say when it is caught up.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use citystream::kafka::{DEFAULT_PREFETCH, KafkaOptions};
use citystream::ownership::{Offset, PartitionId};
use citystream::source::kafka::KafkaReader;
use citystream::source::{Event, Reader};
use common::*;

/// The options of a reader of the topics of `prefix` (its own consumer group).
fn options(prefix: &str) -> KafkaOptions {
    KafkaOptions {
        brokers: brokers(),
        topic_prefix: prefix.to_owned(),
        group: prefix.to_owned(),
        timeout: Duration::from_secs(10),
        client: Default::default(),
        prefetch: DEFAULT_PREFETCH,
    }
}

/// Polls `reader` until `done` holds, collecting record offsets per partition; fails after 60 s.
fn read_until(reader: &mut KafkaReader, seen: &mut BTreeMap<PartitionId, Vec<i64>>, done: impl Fn(&BTreeMap<PartitionId, Vec<i64>>) -> bool) {
    let started = Instant::now();
    while !done(seen) {
        assert!(started.elapsed() < Duration::from_secs(60), "reading stalled: {:?}", seen.iter().map(|(id, o)| (id.to_string(), o.len())).collect::<Vec<_>>());
        let n = reader
            .poll(200, &mut |e| {
                if let Event::Record { id, offset, .. } = e {
                    seen.entry(id).or_default().push(offset.get());
                }
            })
            .expect("reading from Kafka");
        if n == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_recreated_client_reads_on_from_the_next_offset_exactly_once_and_knows_when_it_is_caught_up() {
    let prefix = format!("{}.", unique("reader"));
    simulate(&prefix, &["--vehicles", "5", "--events", "4000", "--partitions", "2", "--key", "id", "--seed", "7"]);
    let opts = options(&prefix);
    let partitions = opts.discover().unwrap();
    assert_eq!(partitions.len(), 10);
    let marks = opts.watermarks(&partitions).unwrap();
    let total: i64 = marks.values().map(|w| w.high.since(w.low)).sum();
    assert_eq!(total, 4000);
    let owned: Vec<(PartitionId, Option<Offset>)> = partitions.iter().map(|p| (*p, Some(marks[p].low))).collect();
    let mut reader = KafkaReader::new(&opts, &owned, "reader-test", 1).unwrap();

    // Part of the records, then a new client at the next offsets, then the rest.
    let mut seen = BTreeMap::new();
    read_until(&mut reader, &mut seen, |s| s.values().map(Vec::len).sum::<usize>() >= 1000);
    let before = seen.values().map(Vec::len).sum::<usize>();
    assert!(before < 4000, "the client must be re-created mid-read ({before} of 4000 read)");
    reader.recover().unwrap();
    read_until(&mut reader, &mut seen, |s| s.values().map(Vec::len).sum::<usize>() >= 4000);
    for (id, w) in &marks {
        assert_eq!(seen.get(id).cloned().unwrap_or_default(), (w.low.get()..w.high.get()).collect::<Vec<_>>(), "{id}: every offset once, in order");
    }

    // The broker's end, asked after the last record, says every partition is caught up.
    let started = Instant::now();
    loop {
        let progress = reader.progress();
        assert_eq!(progress.len(), 10);
        if progress.iter().all(|p| p.caught() && p.lag() == 0 && p.position == marks[&p.id].high) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not caught up by the broker's word: {progress:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // librdkafka's statistics (every 5 s, served with the client's main queue) describe it.
    let started = Instant::now();
    while !reader.describe(partitions[0]).contains("fetch_state=") {
        assert!(started.elapsed() < Duration::from_secs(30), "no client statistics: {}", reader.describe(partitions[0]));
        reader.poll(10, &mut |_| {}).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reader assigned at the end of every partition gets only end-of-partition events, and its
/// position is that end: librdkafka's batch API moves a client's position one past such an
/// event (it counts the event as a message), which the reader must not pass on.
#[test]
fn a_reader_that_starts_at_the_end_reports_the_end_as_its_position() {
    let prefix = format!("{}.", unique("reader-end"));
    simulate(&prefix, &["--vehicles", "2", "--events", "300", "--partitions", "2", "--key", "id", "--seed", "3"]);
    let opts = options(&prefix);
    let partitions = opts.discover().unwrap();
    let marks = opts.watermarks(&partitions).unwrap();
    let owned: Vec<(PartitionId, Option<Offset>)> = partitions.iter().map(|p| (*p, Some(marks[p].high))).collect();
    let mut reader = KafkaReader::new(&opts, &owned, "reader-end-test", 1).unwrap();
    let mut caught = BTreeSet::new();
    let started = Instant::now();
    while caught.len() < partitions.len() {
        assert!(started.elapsed() < Duration::from_secs(30), "end-of-partition events from {} of {} partitions", caught.len(), partitions.len());
        reader
            .poll(100, &mut |e| match e {
                Event::Caught { id } => {
                    caught.insert(id);
                }
                Event::Record { id, offset, .. } => panic!("{id}: a record at {offset:?}, at or past the end {:?}", marks[&id].high),
            })
            .expect("reading from Kafka");
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in reader.progress() {
        assert_eq!(p.position, marks[&p.id].high, "{}: the position after its end-of-partition event", p.id);
    }
}
