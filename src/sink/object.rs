//! One object being written: rows held until it is worth starting an encoder, then encoded
//! into row groups whose bytes go out as upload parts while the object is open.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use object_store::path::Path;
use tokio::task::JoinHandle;

use super::encode::ParquetEncoder;
use super::operator::SinkSpec;
use super::upload::ObjectUpload;
use crate::commit::manifest::FileEntry;
use crate::contract::timestamp::format_naive;
use crate::dataflow::{Chunk, note_partition};
use crate::epoch::Epoch;
use crate::error::{ErrorClass, PipelineError};

/// Held batches with fewer rows than this are merged into right-sized ones.
const COMPACT_BELOW_ROWS: usize = 256;

/// An object finishing in the background; the handle yields its size.
pub(super) type Upload = (FileEntry, JoinHandle<Result<u64, object_store::Error>>);

/// An open object.
pub(super) struct OpenObject {
    entry: FileEntry,
    /// The schema of the chunks, which the source's builders give them.
    schema: SchemaRef,
    /// Rows that arrived before the encoder was started.
    held: Vec<RecordBatch>,
    encoder: Option<ParquetEncoder>,
    upload: ObjectUpload,
}

impl OpenObject {
    /// An object at `path` whose first rows are those of epoch `first`.
    pub(super) fn new(spec: &SinkSpec, path: Path, chunk: &Chunk, first: Epoch) -> Self {
        let key = chunk.key;
        let entry = FileEntry {
            path: path.to_string(),
            stream: key.stream,
            kind: key.kind,
            epoch: first,
            last_epoch: first,
            partitions: Vec::new(),
            rows: 0,
            bytes: 0,
            stats: None,
            aggregate: None,
        };
        OpenObject {
            entry,
            schema: chunk.batch.schema(),
            held: Vec::new(),
            encoder: None,
            upload: ObjectUpload::new(spec.lake.store.clone(), path, spec.part_size),
        }
    }

    /// Takes the rows of `chunk` (of epoch `epoch`): held while the object is small, else
    /// encoded, finished bytes passed on to the upload.
    pub(super) fn write(&mut self, spec: &SinkSpec, chunk: Chunk, epoch: Epoch) -> Result<(), PipelineError> {
        for &partition in &chunk.partitions {
            note_partition(&mut self.entry.partitions, partition);
        }
        self.entry.last_epoch = epoch;
        self.hold(chunk.batch)?;
        if self.held.iter().map(RecordBatch::num_rows).sum::<usize>() >= spec.encode_after_rows {
            self.encode_held(spec)?;
        }
        Ok(())
    }

    /// Holds `batch` until the encoder starts. Batches of a few rows keep the capacity their
    /// builders reserved (about 1,024 rows a column), so they are merged into right-sized ones:
    /// an object can wait for its rows for a whole commit, and a commit of a backlog sparse in
    /// event time has thousands of late objects receiving a row now and then.
    fn hold(&mut self, batch: RecordBatch) -> Result<(), PipelineError> {
        let small = |b: &RecordBatch| b.num_rows() < COMPACT_BELOW_ROWS;
        if !small(&batch) {
            self.held.push(batch);
            return Ok(());
        }
        // A small batch joins a small last one, or stands alone; either way copied right-sized.
        let last = if self.held.last().is_some_and(small) { self.held.pop() } else { None };
        let parts: Vec<&RecordBatch> = last.iter().chain([&batch]).collect();
        let merged = arrow::compute::concat_batches(&self.schema, parts)
            .map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("merging rows of {}", self.entry.path), e))?;
        self.held.push(merged);
        Ok(())
    }

    /// Bytes written so far: uploaded or queued, plus the row group being encoded.
    pub(super) fn size(&self) -> u64 {
        self.upload.size() + self.encoder.as_ref().map_or(0, |e| e.buffered_bytes() as u64)
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

    /// Writes the footer (naming the epochs the object holds) and finishes the upload in the
    /// background.
    pub(super) fn close(mut self, spec: &SinkSpec) -> Result<Upload, PipelineError> {
        self.encode_held(spec)?;
        let encoder = self.encoder.take().expect("encode_held starts the encoder");
        let (first, last) = (self.entry.epoch, self.entry.last_epoch);
        let metadata = vec![
            ("citystream.first_epoch".to_owned(), first.to_string()),
            ("citystream.last_epoch".to_owned(), last.to_string()),
            ("citystream.epoch_start".to_owned(), format_naive(spec.clock.start_of(first)).to_string()),
            ("citystream.watermark".to_owned(), format_naive(spec.clock.start_of(last + 1)).to_string()),
            ("citystream.kind".to_owned(), self.entry.kind.as_str().to_owned()),
            ("citystream.stream".to_owned(), self.entry.stream.name().to_owned()),
            ("citystream.partitions".to_owned(), self.entry.partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",")),
        ];
        self.entry.rows = encoder.rows();
        let path = self.entry.path.clone();
        let (bytes, footer) = encoder.close(metadata).map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("finishing {path}"), e))?;
        self.entry.stats = Some(crate::delta::stats::stats_json(&self.schema, &footer));
        self.upload
            .write(&spec.rt, &bytes)
            .map_err(|e| PipelineError::caused(ErrorClass::Transient, format!("uploading {path}: {}", spec.lake.gave_up()), e))?;
        self.entry.bytes = self.upload.size();
        Ok((self.entry, self.upload.finish(&spec.rt)))
    }
}
