//! Parquet encoding, knowing nothing of where the bytes go.
//!
//! In: `RecordBatch`es of one schema. Out: Parquet bytes, handed out as they are produced so
//! that a caller can stream them (as multipart upload parts) instead of holding whole files.
//! A row group is closed when it holds `max_row_group_rows` rows or its encoded size reaches
//! `row_group_bytes`, whichever comes first: that is what bounds memory per open file.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::contract::schema::{Shape, shape};

/// The compression of Parquet pages (`--compression`). Every codec here is read by Athena,
/// Redshift Spectrum, Spark, DuckDB and pyarrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd at a level (1–22): the smallest files, the most CPU per small object.
    Zstd(i32),
    /// Snappy: what the original Spark job wrote; ~half zstd's CPU, larger files.
    Snappy,
    /// No compression.
    None,
}

impl Codec {
    /// Parses `zstd`, `zstd:<level>`, `snappy` or `none`.
    pub fn parse(s: &str) -> Result<Codec, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "zstd" => Ok(Codec::Zstd(1)),
            "snappy" => Ok(Codec::Snappy),
            "none" | "uncompressed" => Ok(Codec::None),
            _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(level)) if (1..=22).contains(&level) => Ok(Codec::Zstd(level)),
                Some(_) => Err(format!("{s:?}: the zstd level must be 1..=22")),
                None => Err(format!("{s:?} is not one of zstd, zstd:<level>, snappy, none")),
            },
        }
    }

    /// The Parquet compression setting.
    pub fn compression(self) -> Compression {
        match self {
            Codec::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default()),
            Codec::Snappy => Compression::SNAPPY,
            Codec::None => Compression::UNCOMPRESSED,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Zstd(level) => write!(f, "zstd:{level}"),
            Codec::Snappy => f.write_str("snappy"),
            Codec::None => f.write_str("none"),
        }
    }
}

/// How files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Close a row group at this many rows.
    pub max_row_group_rows: usize,
    /// …or when its buffered encoded size reaches this many bytes.
    pub row_group_bytes: usize,
    /// Page compression.
    pub codec: Codec,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { max_row_group_rows: 128 * 1024, row_group_bytes: 8 << 20, codec: Codec::Zstd(1) }
    }
}

/// The writer properties of a file of `schema`: the codec where it pays, a dictionary where it
/// pays (both by the column's [`Shape`]), statistics per page (for predicate pushdown in
/// Athena/DuckDB), and our name as the creator. Compression and encoding are per column chunk
/// in Parquet, and every reader handles them mixed.
pub fn writer_properties(opts: &EncodeOptions, schema: &Schema) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(opts.codec.compression())
        .set_max_row_group_row_count(Some(opts.max_row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("citystream {}", env!("CARGO_PKG_VERSION")));
    for field in schema.fields() {
        let column = ColumnPath::from(field.name().as_str());
        b = match shape(field.name()) {
            Shape::Few => b.set_column_compression(column, Compression::UNCOMPRESSED),
            Shape::Unique => b.set_column_dictionary_enabled(column, false),
            Shape::Measure => b.set_column_dictionary_enabled(column.clone(), false).set_column_compression(column, Compression::UNCOMPRESSED),
            Shape::Text => b,
        };
    }
    b.build()
}

/// A `Write` whose bytes can be taken out while the writer still owns it.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One Parquet file being encoded.
pub struct ParquetEncoder {
    writer: ArrowWriter<SharedBuffer>,
    schema: SchemaRef,
    out: SharedBuffer,
    row_group_bytes: usize,
    rows: u64,
}

impl ParquetEncoder {
    /// Starts a file of `schema`.
    pub fn new(schema: SchemaRef, opts: &EncodeOptions) -> Result<Self, ParquetError> {
        let out = SharedBuffer::default();
        let props = writer_properties(opts, &schema);
        let writer = ArrowWriter::try_new(out.clone(), schema.clone(), Some(props))?;
        Ok(ParquetEncoder { writer, schema, out, row_group_bytes: opts.row_group_bytes, rows: 0 })
    }

    /// Encodes a batch; closes the row group if it grew past its byte budget.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch)?;
        if self.writer.in_progress_size() >= self.row_group_bytes {
            self.writer.flush()?;
        }
        Ok(())
    }

    /// The schema of the file.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes buffered in the open row group (encoded, before the final flush).
    pub fn buffered_bytes(&self) -> usize {
        self.writer.in_progress_size()
    }

    /// Takes the bytes finished so far (closed row groups, the header).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        self.out.take()
    }

    /// Finishes the file with `metadata` in its footer and returns the remaining bytes and
    /// the footer as written (its statistics go into the Delta `add`).
    pub fn close(mut self, metadata: Vec<(String, String)>) -> Result<(Vec<u8>, ParquetMetaData), ParquetError> {
        for (key, value) in metadata {
            self.writer.append_key_value_metadata(KeyValue::new(key, value));
        }
        let footer = self.writer.close()?;
        Ok((self.out.take(), footer))
    }
}

/// A batch as an uncompressed Parquet file (the Arrow schema embedded, so every type comes back
/// exactly), for moving it between processes.
pub fn batch_to_parquet(batch: &RecordBatch) -> Result<Vec<u8>, ParquetError> {
    let opts = EncodeOptions { codec: Codec::None, ..EncodeOptions::default() };
    let mut enc = ParquetEncoder::new(batch.schema(), &opts)?;
    enc.write(batch)?;
    let mut bytes = enc.take_bytes();
    bytes.extend(enc.close(Vec::new())?.0);
    Ok(bytes)
}

/// The batch of [`batch_to_parquet`].
pub fn batch_from_parquet(bytes: Vec<u8>) -> Result<RecordBatch, ParquetError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?;
    let schema = reader.schema().clone();
    let batches = reader.build()?.collect::<Result<Vec<_>, _>>()?;
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_parse_and_print_back() {
        for (text, codec) in [("zstd", Codec::Zstd(1)), ("zstd:9", Codec::Zstd(9)), ("Snappy", Codec::Snappy), ("none", Codec::None)] {
            assert_eq!(Codec::parse(text), Ok(codec), "{text}");
            assert_eq!(Codec::parse(&codec.to_string()), Ok(codec));
        }
        assert!(Codec::parse("zstd:0").unwrap_err().contains("1..=22"));
        assert!(Codec::parse("gzip").unwrap_err().contains("not one of"));
    }
    use crate::contract::schema::{BatchBuilder, Provenance};
    use crate::contract::{DecodeOptions, Stream, decode};
    use crate::simulate::{Fleet, FleetConfig};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn streams_bytes_out_and_reads_back() {
        let mut fleet = Fleet::new(FleetConfig { vehicles: 10, ..FleetConfig::default() });
        let opts = EncodeOptions { max_row_group_rows: 1000, row_group_bytes: 1 << 30, codec: Codec::Zstd(1) };
        let mut enc = ParquetEncoder::new(crate::contract::schema::schema(Stream::Gps, true), &opts).unwrap();
        let mut b = BatchBuilder::new(Stream::Gps, true);
        let mut streamed = Vec::new();
        for i in 0..5000 {
            let rec = decode(Stream::Gps, &fleet.step()[1].value, &DecodeOptions::default()).unwrap();
            b.append(&rec, Some(Provenance { partition: 0, offset: i, late: false }));
            if b.len() == 700 {
                enc.write(&b.finish().unwrap()).unwrap();
                streamed.extend(enc.take_bytes());
            }
        }
        enc.write(&b.finish().unwrap()).unwrap();
        assert!(streamed.len() > 1000, "closed row groups leave before the file is finished");
        streamed.extend(enc.close(vec![("citystream.epoch".into(), "7".into())]).unwrap().0);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(streamed)).unwrap();
        let md = reader.metadata().clone();
        assert_eq!(md.file_metadata().num_rows(), 5000);
        assert_eq!(md.num_row_groups(), 5);
        let kv = md.file_metadata().key_value_metadata().unwrap();
        assert!(kv.iter().any(|k| k.key == "citystream.epoch" && k.value.as_deref() == Some("7")));
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 5000);
    }

    #[test]
    fn columns_are_stored_by_their_shape_and_read_back() {
        use parquet::basic::{Compression, Encoding};
        let mut fleet = Fleet::new(FleetConfig { vehicles: 50, ..FleetConfig::default() });
        let mut b = BatchBuilder::new(Stream::Weather, true);
        let mut expect = Vec::new();
        for i in 0..330 {
            let rec = decode(Stream::Weather, &fleet.step()[3].value, &DecodeOptions::default()).unwrap();
            b.append(&rec, Some(Provenance { partition: 2, offset: i, late: false }));
            expect.push(rec);
        }
        let mut enc = ParquetEncoder::new(crate::contract::schema::schema(Stream::Weather, true), &EncodeOptions::default()).unwrap();
        enc.write(&b.finish().unwrap()).unwrap();
        let mut bytes = enc.take_bytes();
        bytes.extend(enc.close(Vec::new()).unwrap().0);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        let rg = reader.metadata().row_group(0).clone();
        let chunk = |name: &str| rg.columns().iter().find(|c| c.column_path().string() == name).unwrap_or_else(|| panic!("{name}")).clone();
        let dictionary = |name: &str| chunk(name).encodings().any(|e| e == Encoding::RLE_DICTIONARY || e == Encoding::PLAIN_DICTIONARY);
        for (name, compression, dict) in [
            ("weatherCondition", Compression::UNCOMPRESSED, true),  // Few
            ("_partition", Compression::UNCOMPRESSED, true),        // Few
            ("id", Compression::ZSTD(ZstdLevel::default()), false), // Unique
            ("_offset", Compression::ZSTD(ZstdLevel::default()), false),
            ("temperature", Compression::UNCOMPRESSED, false), // Measure
            ("latitude", Compression::UNCOMPRESSED, false),
            ("deviceId", Compression::ZSTD(ZstdLevel::default()), true), // Text
        ] {
            assert_eq!(chunk(name).compression(), compression, "{name}");
            assert_eq!(dictionary(name), dict, "{name}: dictionary");
        }
        // Every value reads back as written.
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 330);
        let mut again = BatchBuilder::new(Stream::Weather, true);
        for (i, rec) in expect.iter().enumerate() {
            again.append(rec, Some(Provenance { partition: 2, offset: i as i64, late: false }));
        }
        assert_eq!(batch, again.finish().unwrap());
    }
}
