//! The sink stage as a stream method, `chunks.write_parquet(spec)`: Arrow batches at their
//! epochs → Parquet objects, finished when the epoch is sealed.
//!
//! In: [`Chunk`]s of rows stamped with the epoch that commits them, built by the sources of
//! this process's workers and sent to the worker that writes their object
//! ([`crate::dataflow::writer_of`]). Out: at epoch `e`, the list of objects written for `e`
//! ([`Report::Files`]), sent only once every one of them is complete in the store.
//! Guarantees: one object per (epoch, stream, kind[, event hour for late rows]) per process,
//! holding the rows of all the partitions the process's workers own (their `_partition` column
//! and the manifest entry say which); rows stream out as row groups and upload parts while the
//! epoch is open, so memory per open file is bounded by the batch, row-group and part sizes,
//! not by the epoch's size; the operator holds a capability for `e` until its objects are
//! durable, so the committer's frontier passing `e` means "every object of `e` exists". When
//! the store is slow or down, at most `MAX_UNFINISHED_OBJECTS` / `MAX_UNFINISHED_BYTES` of
//! closed objects wait for it: then the process's sources stop reading
//! ([`crate::dataflow::Backpressure`]) instead of anything buffering without bound; no worker
//! thread waits. Errors go to the process's [`Failure`], never end the process here.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::commit::manifest::FileEntry;
use crate::contract::timestamp::format_naive;
use crate::dataflow::{Backpressure, Chunk, FileKey, Report, note_partition};
use crate::epoch::{Epoch, EpochClock};
use crate::error::{ErrorClass, Failure, PipelineError};
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
    /// Holds this process's sources back while too many objects are unfinished.
    pub backpressure: Backpressure,
    /// Where an error that stops the pipeline goes.
    pub failure: Failure,
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
    fn write(&mut self, spec: &SinkSpec, chunk: Chunk) -> Result<(), PipelineError> {
        for &partition in &chunk.partitions {
            note_partition(&mut self.entry.partitions, partition);
        }
        self.held.push(chunk.batch);
        if self.held.iter().map(RecordBatch::num_rows).sum::<usize>() >= spec.encode_after_rows {
            self.encode_held(spec)?;
        }
        Ok(())
    }

    /// Encodes the held rows, starting the encoder if need be.
    fn encode_held(&mut self, spec: &SinkSpec) -> Result<&mut ParquetEncoder, PipelineError> {
        let path = &self.entry.path;
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            slot => slot.insert(
                ParquetEncoder::new(self.schema.clone(), &spec.encode)
                    .map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("cannot start the Parquet file {path}"), e))?,
            ),
        };
        for batch in self.held.drain(..) {
            encoder.write(&batch).map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("encoding {path}"), e))?;
        }
        let bytes = encoder.take_bytes();
        if !bytes.is_empty() {
            self.upload
                .write(&spec.rt, &bytes)
                .map_err(|e| PipelineError::caused(ErrorClass::Transient, format!("uploading {path}: {}", spec.lake.gave_up()), e))?;
        }
        Ok(encoder)
    }

    fn close(mut self, spec: &SinkSpec) -> Result<Upload, PipelineError> {
        self.encode_held(spec)?;
        let encoder = self.encoder.take().expect("encode_held starts the encoder");
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
        let path = self.entry.path.clone();
        let bytes = encoder.close(metadata).map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("finishing {path}"), e))?;
        self.upload
            .write(&spec.rt, &bytes)
            .map_err(|e| PipelineError::caused(ErrorClass::Transient, format!("uploading {path}: {}", spec.lake.gave_up()), e))?;
        self.entry.bytes = self.upload.size();
        Ok((self.entry, self.upload.finish(&spec.rt)))
    }
}

/// The sink as a stream method: `chunks.write_parquet(spec)`.
pub trait WriteParquet<'s> {
    /// Writes the chunks into Parquet objects; the output carries, at each sealed epoch, the
    /// objects written for it, once all of them are durable.
    fn write_parquet(self, spec: SinkSpec) -> Stream<'s, Epoch, Vec<Report>>;
}

impl<'s> WriteParquet<'s> for Stream<'s, Epoch, Vec<Chunk>> {
    fn write_parquet(self, spec: SinkSpec) -> Stream<'s, Epoch, Vec<Report>> {
        build_sink(self, spec)
    }
}

fn build_sink<'s>(chunks: Stream<'s, Epoch, Vec<Chunk>>, spec: SinkSpec) -> Stream<'s, Epoch, Vec<Report>> {
    let scope: Scope<'s, Epoch> = chunks.scope();
    let mut builder = OperatorBuilder::new("ParquetSink".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(chunks, Pipeline);
    let (output, reports) = builder.new_output();
    let mut output: ReportOutput = OutputBuilder::from(output);

    builder.build_reschedule(move |_caps| {
        let mut state = SinkState::default();
        move |frontiers| {
            if spec.failure.is_set() {
                return false;
            }
            let mut failed = None;
            input.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let cap = || cap.retain_least(0).expect("a stamped message");
                if let Err(e) = state.take(&spec, t, cap, data) {
                    failed.get_or_insert(e);
                }
            });
            let result = match failed {
                Some(e) => Err(e),
                None => state.seal(&spec, &frontiers[0]).and_then(|()| state.report(&spec, &mut output)),
            };
            if let Err(e) = result {
                spec.failure.set(e);
                return false;
            }
            state.bound_unfinished(&spec);
            if !state.sealing.is_empty() {
                activator.activate_after(Duration::from_millis(2));
            }
            !state.sealing.is_empty()
        }
    });
    reports
}

/// The sink's objects: open per epoch while rows arrive, then sealing until durable.
#[derive(Default)]
struct SinkState {
    open: BTreeMap<Epoch, (Capability<Epoch>, HashMap<FileKey, OpenFile>)>,
    sealing: BTreeMap<Epoch, Sealing>,
    most_open: usize,
    /// Since when this sink holds the process's sources back, and when it last said so.
    holding: Option<(Instant, Instant)>,
}

impl SinkState {
    /// Takes chunks stamped `t` into their open files (`cap` gives the epoch's capability the
    /// first time the epoch is seen).
    fn take(&mut self, spec: &SinkSpec, t: Epoch, cap: impl FnOnce() -> Capability<Epoch>, data: &mut Vec<Chunk>) -> Result<(), PipelineError> {
        let (_, files) = self.open.entry(t).or_insert_with(|| (cap(), HashMap::new()));
        for chunk in data.drain(..) {
            files.entry(chunk.key).or_insert_with(|| OpenFile::new(spec, t, chunk.key, chunk.batch.schema())).write(spec, chunk)?;
        }
        // Open epochs are what memory grows with (tests/run_cluster.rs bounds them).
        if self.open.len() > self.most_open {
            self.most_open = self.open.len();
            let files: usize = self.open.values().map(|(_, f)| f.len()).sum();
            tracing::debug!(epochs = self.most_open, files, "sink: most epochs open so far");
        }
        Ok(())
    }

    /// Seals every epoch the frontier has passed: finishes its objects in the background.
    fn seal(&mut self, spec: &SinkSpec, frontier: &timely::progress::frontier::MutableAntichain<Epoch>) -> Result<(), PipelineError> {
        while let Some((&e, _)) = self.open.first_key_value() {
            if frontier.less_equal(&e) {
                break;
            }
            let (cap, files) = self.open.remove(&e).expect("first key exists");
            let mut files: Vec<(FileKey, OpenFile)> = files.into_iter().collect();
            files.sort_by_key(|(k, _)| *k);
            let uploads = files.into_iter().map(|(_, f)| f.close(spec)).collect::<Result<Vec<_>, _>>()?;
            self.sealing.insert(e, (cap, uploads, crate::clock::now_micros()));
        }
        Ok(())
    }

    /// Reports the epochs whose objects are all durable.
    fn report(&mut self, spec: &SinkSpec, output: &mut ReportOutput) -> Result<(), PipelineError> {
        let done: Vec<Epoch> = self.sealing.iter().filter(|(_, (_, ups, _))| ups.iter().all(|(_, h)| h.is_finished())).map(|(e, _)| *e).collect();
        for e in done {
            let (cap, uploads, sealed_at_us) = self.sealing.remove(&e).expect("listed above");
            let mut entries = Vec::with_capacity(uploads.len());
            for (mut entry, handle) in uploads {
                match spec.rt.block_on(handle) {
                    Ok(Ok(bytes)) => entry.bytes = bytes,
                    Ok(Err(err)) => {
                        let message = format!("writing {} failed after retries: {}", entry.path, spec.lake.gave_up());
                        return Err(PipelineError::caused(ErrorClass::Transient, message, err));
                    }
                    Err(err) => return Err(PipelineError::caused(ErrorClass::Definite, format!("the upload task for {} failed", entry.path), err)),
                }
                entries.push(entry);
            }
            output.activate().session(&cap).give(Report::Files { files: entries, sealed_at_us });
        }
        Ok(())
    }

    /// Back-pressure: while too many objects are unfinished (the store is slow or down and its
    /// requests are being retried), the process's sources stop reading until the oldest are
    /// durable, so memory and concurrent requests stay bounded; the worker thread keeps running
    /// (and the upload errors out once the store's retry budget is spent).
    fn bound_unfinished(&mut self, spec: &SinkSpec) {
        match (over_budget(&self.sealing), self.holding.as_mut()) {
            (true, None) => {
                spec.backpressure.engage();
                self.holding = Some((Instant::now(), Instant::now()));
            }
            (true, Some((since, said))) => {
                if said.elapsed() >= STORE_WAIT_WARNING {
                    *said = Instant::now();
                    tracing::warn!(
                        output = %spec.lake.url,
                        waiting = ?Duration::from_secs(since.elapsed().as_secs()),
                        retry_budget = ?spec.lake.retry_timeout,
                        "the store is slow or unreachable: objects are being retried, reading waits for them"
                    );
                }
            }
            (false, Some(_)) => {
                spec.backpressure.release();
                self.holding = None;
            }
            (false, None) => {}
        }
    }
}

/// The sink's output of reports.
type ReportOutput = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Report>>>;

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
