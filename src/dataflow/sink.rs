//! `parquet_sink`: rows at their epochs → Parquet objects, finished when the epoch is sealed.
//!
//! In: rows stamped with the epoch that commits them. Out: at epoch `e`, the list of objects
//! written for `e` ([`Report::Files`]), sent only once every one of them is complete in the
//! store. Guarantees: one object per (epoch, stream, kind[, event hour for late rows]) per
//! worker, holding the rows of all the partitions the worker owns (their `_partition` column
//! and the manifest entry say which); rows stream out as row groups and upload parts while the epoch is open, so memory
//! per open file is bounded by the batch, row-group and part sizes, not by the epoch's size;
//! the operator holds a capability for `e` until its objects are durable, so the committer's
//! frontier passing `e` means "every object of `e` exists". When the store is slow or down,
//! at most `MAX_UNFINISHED_OBJECTS` / `MAX_UNFINISHED_BYTES` of closed objects wait for it: then
//! the worker waits too (and so stops reading), instead of buffering without bound.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{Report, Row};
use crate::commit::manifest::FileEntry;
use crate::contract::schema::{BatchBuilder, DeadLetterBuilder, DeadLetterRow, Provenance, dead_letter_schema, schema};
use crate::contract::timestamp::{MICROS_PER_SEC, format_naive};
use crate::contract::{Micros, Stream as DataStream};
use crate::epoch::{Epoch, EpochClock};
use crate::lake::{FileKind, Lake, file_path};
use crate::sink::encode::{EncodeOptions, ParquetEncoder};
use crate::sink::upload::ObjectUpload;

/// Everything the sink needs.
#[derive(Clone)]
pub struct SinkSpec {
    /// Where objects go.
    pub lake: Lake,
    /// Runs the uploads.
    pub rt: Handle,
    /// This process's run id, part of every object name.
    pub run: String,
    /// Epoch arithmetic (for paths and metadata).
    pub clock: EpochClock,
    /// Parquet settings.
    pub encode: EncodeOptions,
    /// Multipart part size (S3 needs ≥ 5 MiB).
    pub part_size: usize,
    /// Rows buffered per file before they are encoded.
    pub batch_rows: usize,
    /// Kafka topic prefix, for the dead-letter `topic` column.
    pub topic_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FileKey {
    stream: DataStream,
    kind: FileKind,
    hour: Micros,
}

enum Rows {
    Data(Box<BatchBuilder>),
    Dead(Box<DeadLetterBuilder>),
}

struct OpenFile {
    entry: FileEntry,
    rows: Rows,
    encoder: ParquetEncoder,
    upload: ObjectUpload,
}

const HOUR: Micros = 3600 * MICROS_PER_SEC;

/// An object being finished in the background; the handle yields its size.
type Upload = (FileEntry, JoinHandle<Result<u64, object_store::Error>>);

/// A sealed epoch whose objects are being finished: its capability, its uploads, and when it was
/// sealed (µs since the Unix epoch).
type Sealing = (Capability<Epoch>, Vec<Upload>, i64);

impl OpenFile {
    fn new(spec: &SinkSpec, epoch: Epoch, key: FileKey) -> Self {
        let path = file_path(key.stream, key.kind, epoch, &spec.run, key.hour);
        let (rows, schema) = match key.kind {
            FileKind::DeadLetter => (Rows::Dead(Box::default()), dead_letter_schema()),
            _ => (Rows::Data(Box::new(BatchBuilder::new(key.stream, true))), schema(key.stream, true)),
        };
        let encoder = ParquetEncoder::new(schema, &spec.encode).unwrap_or_else(|e| super::fatal(&format!("cannot start a Parquet file: {e}")));
        let entry = FileEntry { path: path.to_string(), stream: key.stream, kind: key.kind, epoch, partitions: Vec::new(), rows: 0, bytes: 0 };
        OpenFile { entry, rows, encoder, upload: ObjectUpload::new(spec.lake.store.clone(), path, spec.part_size) }
    }

    fn pending(&self) -> usize {
        match &self.rows {
            Rows::Data(b) => b.len(),
            Rows::Dead(b) => b.len(),
        }
    }

    /// Encodes buffered rows and passes finished bytes on to the upload.
    fn flush(&mut self, spec: &SinkSpec) {
        if self.pending() > 0 {
            let batch = match &mut self.rows {
                Rows::Data(b) => b.finish(),
                Rows::Dead(b) => b.finish(),
            };
            let batch = batch.unwrap_or_else(|e| super::fatal(&format!("building a batch for {}: {e}", self.entry.path)));
            self.encoder.write(&batch).unwrap_or_else(|e| super::fatal(&format!("encoding {}: {e}", self.entry.path)));
        }
        let bytes = self.encoder.take_bytes();
        if !bytes.is_empty() {
            self.upload.write(&spec.rt, &bytes).unwrap_or_else(|e| super::fatal(&format!("uploading {}: {e}; {}", self.entry.path, spec.lake.gave_up())));
        }
    }

    fn close(mut self, spec: &SinkSpec) -> Upload {
        self.flush(spec);
        let e = self.entry.epoch;
        let metadata = vec![
            ("citystream.epoch".to_owned(), e.to_string()),
            ("citystream.epoch_start".to_owned(), format_naive(spec.clock.start_of(e)).to_string()),
            ("citystream.watermark".to_owned(), format_naive(spec.clock.start_of(e + 1)).to_string()),
            ("citystream.kind".to_owned(), format!("{:?}", self.entry.kind).to_lowercase()),
            ("citystream.stream".to_owned(), self.entry.stream.name().to_owned()),
            ("citystream.partitions".to_owned(), self.entry.partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",")),
        ];
        self.entry.rows = self.encoder.rows();
        let bytes = self.encoder.close(metadata).unwrap_or_else(|e| super::fatal(&format!("finishing {}: {e}", self.entry.path)));
        self.upload.write(&spec.rt, &bytes).unwrap_or_else(|e| super::fatal(&format!("uploading {}: {e}; {}", self.entry.path, spec.lake.gave_up())));
        self.entry.bytes = self.upload.size();
        (self.entry, self.upload.finish(&spec.rt))
    }
}

/// Builds the sink operator; its output carries the objects of each sealed epoch.
pub fn parquet_sink<'s>(rows: Stream<'s, Epoch, Vec<Row>>, spec: SinkSpec) -> Stream<'s, Epoch, Vec<Report>> {
    let scope: Scope<'s, Epoch> = rows.scope();
    let mut builder = OperatorBuilder::new("ParquetSink".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(rows, Pipeline);
    let (output, reports) = builder.new_output();
    let mut output: OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Report>>> = OutputBuilder::from(output);

    builder.build_reschedule(move |_caps| {
        let mut open: BTreeMap<Epoch, (Capability<Epoch>, HashMap<FileKey, OpenFile>)> = BTreeMap::new();
        let mut sealing: BTreeMap<Epoch, Sealing> = BTreeMap::new();
        let mut most_open = 0;

        move |frontiers| {
            input.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let (_, files) = open.entry(t).or_insert_with(|| (cap.retain_least(0).expect("a stamped message"), HashMap::new()));
                for row in data.drain(..) {
                    let key = route(&row, t, &spec.clock);
                    let file = files.entry(key).or_insert_with(|| OpenFile::new(&spec, t, key));
                    let (Row::Record { partition, .. } | Row::Dead { partition, .. }) = &row;
                    if let Err(i) = file.entry.partitions.binary_search(partition) {
                        file.entry.partitions.insert(i, *partition);
                    }
                    match (&mut file.rows, &row) {
                        (Rows::Data(b), Row::Record { record, partition, offset, late }) => {
                            b.append(record, Some(Provenance { partition: *partition, offset: *offset, late: *late }))
                        }
                        (Rows::Dead(b), Row::Dead { stream, partition, offset, class, reason, raw }) => {
                            let topic = format!("{}{}", spec.topic_prefix, stream.name());
                            b.append(&DeadLetterRow { topic: &topic, partition: *partition, offset: *offset, class: class.as_str(), reason, raw });
                        }
                        _ => unreachable!("rows are routed to files of their kind"),
                    }
                    if file.pending() >= spec.batch_rows {
                        file.flush(&spec);
                    }
                }
            });

            // Open epochs are what memory grows with (tests/run_cluster.rs bounds them).
            if open.len() > most_open {
                most_open = open.len();
                let files: usize = open.values().map(|(_, f)| f.len()).sum();
                tracing::debug!(epochs = most_open, files, "sink: most epochs open so far");
            }

            // Seal every epoch the frontier has passed: finish its objects in the background.
            let frontier = &frontiers[0];
            while let Some((&e, _)) = open.first_key_value() {
                if frontier.less_equal(&e) {
                    break;
                }
                let (cap, files) = open.remove(&e).expect("first key exists");
                let mut files: Vec<(FileKey, OpenFile)> = files.into_iter().collect();
                files.sort_by_key(|(k, _)| *k);
                let uploads = files.into_iter().map(|(_, f)| f.close(&spec)).collect();
                sealing.insert(e, (cap, uploads, now_us()));
            }

            // Backpressure: while too many objects are unfinished (the store is slow or down and
            // its requests are being retried), wait here for the oldest instead of reading on, so
            // memory and concurrent requests stay bounded. The wait ends when the store answers
            // again, or with a fatal error below once the store's retry budget is spent.
            let waiting_since = std::time::Instant::now();
            let mut warned = waiting_since;
            while over_budget(&sealing) {
                std::thread::sleep(Duration::from_millis(5));
                if warned.elapsed() >= STORE_WAIT_WARNING {
                    warned = std::time::Instant::now();
                    tracing::warn!(
                        output = %spec.lake.url,
                        waiting = ?Duration::from_secs(waiting_since.elapsed().as_secs()),
                        retry_budget = ?spec.lake.retry_timeout,
                        "the store is slow or unreachable: objects are being retried, reading waits for them"
                    );
                }
            }

            // Report epochs whose objects are all durable.
            let done: Vec<Epoch> = sealing.iter().filter(|(_, (_, ups, _))| ups.iter().all(|(_, h)| h.is_finished())).map(|(e, _)| *e).collect();
            for e in done {
                let (cap, uploads, sealed_at_us) = sealing.remove(&e).expect("listed above");
                let mut entries = Vec::with_capacity(uploads.len());
                for (mut entry, handle) in uploads {
                    match spec.rt.block_on(handle) {
                        Ok(Ok(bytes)) => entry.bytes = bytes,
                        Ok(Err(err)) => super::fatal(&format!("writing {} failed after retries: {err}; {}", entry.path, spec.lake.gave_up())),
                        Err(err) => super::fatal(&format!("upload task for {} failed: {err}", entry.path)),
                    }
                    entries.push(entry);
                }
                output.activate().session(&cap).give(Report::Files { files: entries, sealed_at_us });
            }
            if !sealing.is_empty() {
                activator.activate_after(Duration::from_millis(2));
            }
            !sealing.is_empty()
        }
    });
    reports
}

/// Unfinished objects (closed, not yet durable) one sink may have before it waits.
const MAX_UNFINISHED_OBJECTS: usize = 512;

/// Bytes of unfinished objects one sink may have before it waits.
const MAX_UNFINISHED_BYTES: u64 = 256 << 20;

/// How often a sink waiting for the store says so.
const STORE_WAIT_WARNING: Duration = Duration::from_secs(10);

/// Whether the unfinished uploads exceed [`MAX_UNFINISHED_OBJECTS`] or [`MAX_UNFINISHED_BYTES`].
fn over_budget(sealing: &BTreeMap<Epoch, Sealing>) -> bool {
    let (mut count, mut bytes) = (0, 0);
    for (entry, handle) in sealing.values().flat_map(|(_, uploads, _)| uploads) {
        if !handle.is_finished() {
            count += 1;
            bytes += entry.bytes;
        }
    }
    count > MAX_UNFINISHED_OBJECTS || bytes > MAX_UNFINISHED_BYTES
}

/// Wall clock, microseconds since the Unix epoch (for latency measurements only).
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as i64
}

/// The file a row belongs to at epoch `t`.
fn route(row: &Row, t: Epoch, clock: &EpochClock) -> FileKey {
    let epoch_hour = clock.start_of(t) - clock.start_of(t).rem_euclid(HOUR);
    match row {
        Row::Record { record, late: false, .. } => FileKey { stream: record.stream(), kind: FileKind::Data, hour: epoch_hour },
        Row::Record { record, late: true, .. } => {
            let ts = record.timestamp();
            FileKey { stream: record.stream(), kind: FileKind::Late, hour: ts - ts.rem_euclid(HOUR) }
        }
        Row::Dead { stream, .. } => FileKey { stream: *stream, kind: FileKind::DeadLetter, hour: epoch_hour },
    }
}
