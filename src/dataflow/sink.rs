//! `parquet_sink`: Arrow batches at their epochs → Parquet objects, finished when the epoch is
//! sealed.
//!
//! In: [`Chunk`]s of rows stamped with the epoch that commits them, built by the sources of
//! this process's workers and sent to the worker that writes their object
//! ([`super::writer_of`]). Out: at epoch `e`, the list of objects written for `e`
//! ([`Report::Files`]), sent only once every one of them is complete in the store.
//! Guarantees: one object per (epoch, stream, kind[, event hour for late rows]) per process,
//! holding the rows of all the partitions the process's workers own (their `_partition` column
//! and the manifest entry say which); rows stream out as row groups and upload parts while the
//! epoch is open, so memory per open file is bounded by the batch, row-group and part sizes,
//! not by the epoch's size; the operator holds a capability for `e` until its objects are
//! durable, so the committer's frontier passing `e` means "every object of `e` exists". When
//! the store is slow or down, at most `MAX_UNFINISHED_OBJECTS` / `MAX_UNFINISHED_BYTES` of
//! closed objects wait for it: then the worker waits too (and so stops reading), instead of
//! buffering without bound.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{Chunk, FileKey, Report};
use crate::commit::manifest::FileEntry;
use crate::contract::timestamp::format_naive;
use crate::epoch::{Epoch, EpochClock};
use crate::lake::{Lake, file_path};
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
    /// A file starts encoding once this many rows have arrived for it; smaller files are
    /// encoded in one go when their epoch is sealed. An encoder holds compression state of
    /// ≈ 100 KiB per column (parquet's zstd codec has a compression and a decompression
    /// context per column chunk), so encoders are created late, and only files that are
    /// large enough stream out before the seal.
    pub encode_after_rows: usize,
}

struct OpenFile {
    entry: FileEntry,
    /// The schema of the chunks, which the source's builders give them.
    schema: SchemaRef,
    /// Rows that arrived before the encoder was started.
    held: Vec<RecordBatch>,
    encoder: Option<ParquetEncoder>,
    upload: ObjectUpload,
}

/// An object being finished in the background; the handle yields its size.
type Upload = (FileEntry, JoinHandle<Result<u64, object_store::Error>>);

/// A sealed epoch whose objects are being finished: its capability, its uploads, and when it was
/// sealed (µs since the Unix epoch).
type Sealing = (Capability<Epoch>, Vec<Upload>, i64);

impl OpenFile {
    fn new(spec: &SinkSpec, epoch: Epoch, key: FileKey, schema: SchemaRef) -> Self {
        let path = file_path(key.stream, key.kind, epoch, &spec.run, key.hour);
        let entry = FileEntry { path: path.to_string(), stream: key.stream, kind: key.kind, epoch, partitions: Vec::new(), rows: 0, bytes: 0 };
        OpenFile { entry, schema, held: Vec::new(), encoder: None, upload: ObjectUpload::new(spec.lake.store.clone(), path, spec.part_size) }
    }

    /// Takes a chunk: held while the file is small, else encoded, finished bytes passed on to
    /// the upload.
    fn write(&mut self, spec: &SinkSpec, chunk: Chunk) {
        for &partition in &chunk.partitions {
            super::note_partition(&mut self.entry.partitions, partition);
        }
        self.held.push(chunk.batch);
        if self.held.iter().map(RecordBatch::num_rows).sum::<usize>() >= spec.encode_after_rows {
            self.encode_held(spec);
        }
    }

    /// Encodes the held rows, starting the encoder if need be.
    fn encode_held(&mut self, spec: &SinkSpec) -> &mut ParquetEncoder {
        let (path, schema) = (&self.entry.path, &self.schema);
        let encoder = self.encoder.get_or_insert_with(|| {
            ParquetEncoder::new(schema.clone(), &spec.encode).unwrap_or_else(|e| super::fatal(&format!("cannot start the Parquet file {path}: {e}")))
        });
        for batch in self.held.drain(..) {
            encoder.write(&batch).unwrap_or_else(|e| super::fatal(&format!("encoding {path}: {e}")));
        }
        let bytes = encoder.take_bytes();
        if !bytes.is_empty() {
            self.upload.write(&spec.rt, &bytes).unwrap_or_else(|e| super::fatal(&format!("uploading {path}: {e}; {}", spec.lake.gave_up())));
        }
        encoder
    }

    fn close(mut self, spec: &SinkSpec) -> Upload {
        self.encode_held(spec);
        let Some(encoder) = self.encoder.take() else { unreachable!("encode_held starts the encoder") };
        let e = self.entry.epoch;
        let metadata = vec![
            ("citystream.epoch".to_owned(), e.to_string()),
            ("citystream.epoch_start".to_owned(), format_naive(spec.clock.start_of(e)).to_string()),
            ("citystream.watermark".to_owned(), format_naive(spec.clock.start_of(e + 1)).to_string()),
            ("citystream.kind".to_owned(), self.entry.kind.as_str().to_owned()),
            ("citystream.stream".to_owned(), self.entry.stream.name().to_owned()),
            ("citystream.partitions".to_owned(), self.entry.partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",")),
        ];
        self.entry.rows = encoder.rows();
        let bytes = encoder.close(metadata).unwrap_or_else(|e| super::fatal(&format!("finishing {}: {e}", self.entry.path)));
        self.upload.write(&spec.rt, &bytes).unwrap_or_else(|e| super::fatal(&format!("uploading {}: {e}; {}", self.entry.path, spec.lake.gave_up())));
        self.entry.bytes = self.upload.size();
        (self.entry, self.upload.finish(&spec.rt))
    }
}

/// Builds the sink operator; its output carries the objects of each sealed epoch.
pub fn parquet_sink<'s>(chunks: Stream<'s, Epoch, Vec<Chunk>>, spec: SinkSpec) -> Stream<'s, Epoch, Vec<Report>> {
    let scope: Scope<'s, Epoch> = chunks.scope();
    let mut builder = OperatorBuilder::new("ParquetSink".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(chunks, Pipeline);
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
                for chunk in data.drain(..) {
                    files.entry(chunk.key).or_insert_with(|| OpenFile::new(&spec, t, chunk.key, chunk.batch.schema())).write(&spec, chunk);
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
