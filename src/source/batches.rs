//! The source's side of the hand-off to the sink: decoded records appended straight into the
//! Arrow builders of the object they belong to, per epoch.
//!
//! In: records borrowed from their Kafka values (no `String` per field), refused values with
//! their reasons, each with the epoch that commits it. Out: [`Chunk`]s — an Arrow batch of at
//! most `batch_rows` rows for one object of one epoch — ready when a builder is full, and the
//! rest of an epoch's rows when the source is about to let its capability pass that epoch.
//! Guarantee: every appended row is in exactly one chunk, at the epoch it was appended with;
//! [`EpochBatches::take_below`] hands out every row of the epochs below its argument.

use std::collections::BTreeMap;

use crate::contract::schema::{BatchBuilder, DeadLetterBuilder, DeadLetterRow, Provenance};
use crate::contract::timestamp::HOUR;
use crate::contract::{BorrowedRecord, DecodeError, EventTime, Stream};
use crate::dataflow::{Chunk, FileKey, note_partition};
use crate::epoch::{Epoch, EpochClock};
use crate::lake::FileKind;

enum Rows {
    Data(Box<BatchBuilder>),
    Dead(Box<DeadLetterBuilder>),
}

/// The rows of one object not yet handed out, and the partitions they came from.
struct Building {
    rows: Rows,
    partitions: Vec<i32>,
}

impl Building {
    fn new(key: FileKey) -> Self {
        let rows = match key.kind {
            FileKind::DeadLetter => Rows::Dead(Box::default()),
            FileKind::Data | FileKind::Late => Rows::Data(Box::new(BatchBuilder::new(key.stream, true))),
            FileKind::Aggregate => unreachable!("the sources build no aggregate rows"),
        };
        Building { rows, partitions: Vec::new() }
    }

    fn len(&self) -> usize {
        match &self.rows {
            Rows::Data(b) => b.len(),
            Rows::Dead(b) => b.len(),
        }
    }

    /// The pending rows as a chunk (`None` if there are none); the builder starts afresh.
    fn take(&mut self, epoch: Epoch, key: FileKey) -> Option<Chunk> {
        if self.len() == 0 {
            return None;
        }
        let batch = match &mut self.rows {
            Rows::Data(b) => b.finish(),
            Rows::Dead(b) => b.finish(),
        };
        // The builders produce their own schema's columns, all of one length: a failure here is
        // a bug in them, not bad input, and a panic is how the process reports it.
        let batch = batch.expect("a batch builder produces its schema's columns, all of one length");
        Some(Chunk { key, epoch, batch, partitions: std::mem::take(&mut self.partitions) })
    }
}

/// Open builders per epoch and object, and the chunks that are ready to send.
pub struct EpochBatches {
    clock: EpochClock,
    batch_rows: usize,
    /// The dead-letter `topic` column of each stream: the prefix + the stream's name.
    topics: [String; 5],
    /// Per epoch, its objects' builders: a handful (stream × data, late hours, dead letters),
    /// found by a linear search, which is cheaper than hashing the key for every record.
    open: BTreeMap<Epoch, Vec<(FileKey, Building)>>,
    ready: Vec<(Epoch, Chunk)>,
}

impl EpochBatches {
    /// Builders that hand out chunks of `batch_rows` rows; `clock` places late rows in their
    /// event hour, `topic_prefix` names the dead letters' topics.
    pub fn new(clock: EpochClock, batch_rows: usize, topic_prefix: &str) -> Self {
        let topics = Stream::ALL.map(|s| format!("{topic_prefix}{}", s.name()));
        EpochBatches { clock, batch_rows: batch_rows.max(1), topics, open: BTreeMap::new(), ready: Vec::new() }
    }

    /// The hour that names the objects of epoch `epoch` (data and dead letters).
    fn epoch_hour(&self, epoch: Epoch) -> EventTime {
        self.clock.start_of(epoch).floor(HOUR)
    }

    /// Appends one row with `append` to the builder of `key` at `epoch`, and hands the builder's
    /// rows out if it is full.
    fn append(&mut self, epoch: Epoch, key: FileKey, partition: i32, append: impl FnOnce(&mut Rows)) {
        let files = self.open.entry(epoch).or_default();
        let i = match files.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                files.push((key, Building::new(key)));
                files.len() - 1
            }
        };
        let b = &mut files[i].1;
        note_partition(&mut b.partitions, partition);
        append(&mut b.rows);
        if b.len() >= self.batch_rows
            && let Some(chunk) = b.take(epoch, key)
        {
            self.ready.push((epoch, chunk));
        }
    }

    /// Appends a decoded record committed with `epoch`: to the epoch's data object, or, if it
    /// arrived behind the watermark, to the late object of its own event hour.
    pub fn record(&mut self, epoch: Epoch, record: &BorrowedRecord<'_>, provenance: Provenance) {
        let stream = record.stream();
        let key = if provenance.late {
            let ts = record.timestamp();
            FileKey { stream, kind: FileKind::Late, hour: ts.floor(HOUR) }
        } else {
            FileKey { stream, kind: FileKind::Data, hour: self.epoch_hour(epoch) }
        };
        self.append(epoch, key, provenance.partition, |rows| match rows {
            Rows::Data(rows) => rows.append(record, Some(provenance)),
            Rows::Dead(_) => unreachable!("data keys get data builders"),
        });
    }

    /// Appends a value of `stream` that did not decode, with its reason, to the dead-letter
    /// object of `epoch`.
    pub fn dead(&mut self, epoch: Epoch, stream: Stream, partition: i32, offset: i64, error: &DecodeError, raw: &[u8]) {
        let key = FileKey { stream, kind: FileKind::DeadLetter, hour: self.epoch_hour(epoch) };
        let reason = error.to_string();
        let topic = std::mem::take(&mut self.topics[stream.index()]);
        self.append(epoch, key, partition, |rows| match rows {
            Rows::Dead(rows) => rows.append(&DeadLetterRow { topic: &topic, partition, offset, class: error.class.as_str(), reason: &reason, raw }),
            Rows::Data(_) => unreachable!("dead-letter keys get dead-letter builders"),
        });
        self.topics[stream.index()] = topic;
    }

    /// Chunks that filled up, in the order they did.
    pub fn take_ready(&mut self) -> std::vec::Drain<'_, (Epoch, Chunk)> {
        self.ready.drain(..)
    }

    /// Every row of the epochs below `epoch` (all of them with `None`), the ready chunks first;
    /// those epochs' builders are dropped.
    pub fn take_below(&mut self, epoch: Option<Epoch>) -> Vec<(Epoch, Chunk)> {
        let mut out: Vec<(Epoch, Chunk)> = self.ready.drain(..).collect();
        let rest = match epoch {
            Some(e) => self.open.split_off(&e),
            None => BTreeMap::new(),
        };
        for (e, files) in std::mem::replace(&mut self.open, rest) {
            let mut files = files;
            files.sort_by_key(|(k, _)| *k);
            out.extend(files.into_iter().filter_map(|(k, mut b)| b.take(e, k).map(|c| (e, c))));
        }
        out
    }

    /// Rows appended and not yet handed out.
    #[cfg(test)]
    fn pending_rows(&self) -> usize {
        self.open.values().flatten().map(|(_, b)| b.len()).sum::<usize>() + self.ready.iter().map(|(_, c)| c.batch.num_rows()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::contract::schema::{LATE_COLUMN, OFFSET_COLUMN};
    use crate::contract::timestamp::{MICROS_PER_SEC, format_naive};
    use crate::contract::{DecodeOptions, ErrorClass, decode_borrowed};

    const WINDOW: i64 = 60 * MICROS_PER_SEC;
    const START: EventTime = EventTime(1_740_823_200 * MICROS_PER_SEC); // 2025-03-01T10:00:00Z

    fn gps(n: i64, t: EventTime) -> String {
        format!(
            r#"{{"id": "00000000-0000-4000-8000-{n:012x}", "deviceId": "Vehicle-\u00e9-{n}", "timestamp": "{}", "speed": 50.5, "direction": "North", "vehicleType": "private"}}"#,
            format_naive(t)
        )
    }

    fn offsets(batch: &RecordBatch) -> Vec<i64> {
        batch.column_by_name(OFFSET_COLUMN).unwrap().as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn every_row_is_handed_out_once_in_full_chunks_then_per_epoch() {
        let clock = EpochClock::new(WINDOW, 2 * WINDOW);
        let mut b = EpochBatches::new(clock, 4, "city.");
        let epoch = clock.epoch_of(START);
        // 10 records of one epoch from two partitions, one late record, one dead letter.
        for n in 0..10 {
            let value = gps(n, START + n * MICROS_PER_SEC);
            let r = decode_borrowed(Stream::Gps, value.as_bytes(), &DecodeOptions::default()).unwrap();
            b.record(epoch, &r, Provenance { partition: (n % 2) as i32, offset: n, late: false });
        }
        let late = gps(99, START - 90 * 60 * MICROS_PER_SEC);
        let r = decode_borrowed(Stream::Gps, late.as_bytes(), &DecodeOptions::default()).unwrap();
        b.record(epoch + 1, &r, Provenance { partition: 1, offset: 99, late: true });
        let err = decode_borrowed(Stream::Gps, b"{}", &DecodeOptions::default()).unwrap_err();
        b.dead(epoch + 1, Stream::Gps, 0, 100, &err, b"{}");

        // Two full chunks of 4 are ready; 2 rows of `epoch` and 2 of `epoch + 1` wait.
        let ready: Vec<(Epoch, Chunk)> = b.take_ready().collect();
        assert_eq!(ready.iter().map(|(e, c)| (*e, offsets(&c.batch))).collect::<Vec<_>>(), vec![(epoch, vec![0, 1, 2, 3]), (epoch, vec![4, 5, 6, 7])]);
        assert_eq!(ready[0].1.partitions, vec![0, 1]);
        assert_eq!(b.pending_rows(), 4);

        // Below `epoch + 1`: only the rest of `epoch`.
        let below = b.take_below(Some(epoch + 1));
        assert_eq!(below.len(), 1);
        assert_eq!((below[0].0, offsets(&below[0].1.batch)), (epoch, vec![8, 9]));
        assert_eq!(below[0].1.key, FileKey { stream: Stream::Gps, kind: FileKind::Data, hour: START });
        assert_eq!(b.pending_rows(), 2);

        // The rest: the late row under its own event hour, the dead letter with its reason.
        let rest = b.take_below(None);
        assert_eq!(b.pending_rows(), 0);
        let keys: Vec<FileKey> = rest.iter().map(|(_, c)| c.key).collect();
        assert_eq!(
            keys,
            vec![
                FileKey { stream: Stream::Gps, kind: FileKind::Late, hour: START - 2 * 3600 * MICROS_PER_SEC },
                FileKey { stream: Stream::Gps, kind: FileKind::DeadLetter, hour: START },
            ]
        );
        let late_batch = &rest[0].1.batch;
        assert!(late_batch.column_by_name(LATE_COLUMN).unwrap().as_boolean().value(0));
        assert_eq!(late_batch.column_by_name("deviceId").unwrap().as_string::<i32>().value(0), "Vehicle-é-99", "escaped strings are unescaped");
        let dead = &rest[1].1.batch;
        assert_eq!(dead.column_by_name("topic").unwrap().as_string::<i32>().value(0), "city.gps_data");
        assert_eq!(dead.column_by_name("error_class").unwrap().as_string::<i32>().value(0), ErrorClass::MissingField.as_str());
        assert!(dead.column_by_name("reason").unwrap().as_string::<i32>().value(0).contains("`id`"));
        assert_eq!(dead.column_by_name("raw").unwrap().as_binary::<i32>().value(0), b"{}");
        assert!(b.take_below(None).is_empty(), "nothing is handed out twice");
    }
}
