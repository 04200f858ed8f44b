//! Micro-benchmarks of citystream's per-record hot path, one stream at a time, without Kafka:
//!
//! - `decode/<stream>`: JSON value → typed `Record` owning its strings (`contract::decode`),
//!   the simulator's own records (no late or malformed ones).
//! - `decode_borrowed/<stream>`: the same into a record whose strings borrow from the value
//!   (`contract::decode_borrowed`), which is what the source does.
//! - `arrow/<stream>`: typed records → Arrow `RecordBatch`es (`BatchBuilder`, with the
//!   provenance columns, 1,024 rows per batch as the sink hands them over).
//! - `parquet/<stream>`: those batches → one zstd Parquet file (`ParquetEncoder`).
//! - `parquet_small_files/<stream>`: the same rows as files of 330 rows each, which is what
//!   a 60 s window gives for the simulated fleet of 1,000 vehicles read by two workers
//!   (≈ 330 rows per object): the per-file cost.
//! - `pipeline/<stream>`: decode (borrowed) + Arrow + Parquet (small files) together, what one
//!   worker thread does per record, without Kafka and without timely.
//! - `parquet_variants/<variant>`: all five streams as 330-row files again, from ready Arrow
//!   batches, with citystream's writer settings (a dictionary and compression per column by
//!   its `Shape`), with one change each (statistics per column chunk instead of per page, no
//!   embedded Arrow schema), with the uniform settings citystream used before (a dictionary
//!   and zstd for every column; with snappy; uncompressed), and as one file per stream: what
//!   each setting costs per record and in output bytes, for tuning `sink::encode`.
//! - `timestamp/<parser>`: the event time of every record of the five corpora, as the producer
//!   formats it, parsed by citystream's hand-written parser (`contract::timestamp::parse_timestamp`)
//!   and by chrono's (`NaiveDateTime::parse_from_str`, `%Y-%m-%dT%H:%M:%S%.f`): whether the
//!   hand-written one earns its keep.
//! - `route/all`: reclocking, `PartitionClock::observe` per record (event time → epoch,
//!   on time or late), over one partition holding all five streams' event times.
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on a
//! machine shared with other jobs, waiting for a core would otherwise count as work. (Cache
//! and memory-bandwidth contention still show.)
//!
//! Besides criterion's own report, it writes records/s and MB/s (JSON value bytes) of every
//! benchmark to `target/bench-micro.json`, read from criterion's estimates (mean).
//!
//! Run: `cargo bench --bench pipeline` (no services needed; ≈ 2 minutes).
//! `CITYSTREAM_BENCH_RECORDS` sets the records per stream per iteration (default 10,000).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use citystream::contract::schema::{BatchBuilder, Provenance, schema};
use citystream::contract::timestamp::{format_naive, parse_timestamp};
use citystream::contract::{DecodeOptions, Record, Stream, decode, decode_borrowed};
use citystream::epoch::{Epoch, EpochClock};
use citystream::ownership::{Offset, PartitionId};
use citystream::reclock::PartitionClock;
use citystream::simulate::{Fleet, FleetConfig};
use citystream::sink::encode::writer_properties;
use citystream::sink::encode::{EncodeOptions, ParquetEncoder};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};

thread_local! {
    /// Output bytes of each `parquet_variants` variant, for the summary.
    static OUTPUT_BYTES: std::cell::RefCell<Vec<(&'static str, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// CPU time of the calling thread, as a criterion measurement.
struct ThreadCpu;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Durations are formatted as criterion formats wall time.
static WALL: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// Rows per batch handed to the encoder (as `sink::operator` does).
const BATCH_ROWS: usize = 1024;
/// Rows per object at the default 60 s window for the simulated fleet (docs/benchmarks.md).
const SMALL_FILE_ROWS: usize = 330;

/// The simulator's records of one stream: raw JSON values and event times.
struct Corpus {
    stream: Stream,
    values: Vec<Vec<u8>>,
    records: Vec<Record>,
    bytes: u64,
}

fn corpora(per_stream: usize) -> Vec<Corpus> {
    let cfg = FleetConfig { vehicles: 100, seed: 7, ..FleetConfig::default() };
    let mut fleet = Fleet::new(cfg);
    let mut values: Vec<Vec<Vec<u8>>> = vec![Vec::new(); Stream::ALL.len()];
    while values.iter().any(|v| v.len() < per_stream) {
        for rec in fleet.step() {
            let slot = &mut values[rec.stream.index()];
            if slot.len() < per_stream {
                slot.push(rec.value);
            }
        }
    }
    let opts = DecodeOptions::default();
    Stream::ALL
        .iter()
        .zip(values)
        .map(|(&stream, values)| {
            let records = values.iter().map(|v| decode(stream, v, &opts).expect("the simulator's records decode")).collect();
            let bytes = values.iter().map(|v| v.len() as u64).sum();
            Corpus { stream, values, records, bytes }
        })
        .collect()
}

fn prov(i: usize) -> Option<Provenance> {
    Some(Provenance { partition: 0, offset: i as i64, late: false })
}

/// Records → batches of `BATCH_ROWS`.
fn build_batches(stream: Stream, records: &[Record]) -> Vec<RecordBatch> {
    let mut b = BatchBuilder::new(stream, true);
    let mut out = Vec::with_capacity(records.len() / BATCH_ROWS + 1);
    for (i, r) in records.iter().enumerate() {
        b.append(r, prov(i));
        if b.len() == BATCH_ROWS {
            out.push(b.finish().expect("batch"));
        }
    }
    if !b.is_empty() {
        out.push(b.finish().expect("batch"));
    }
    out
}

/// Encodes records as Parquet files of `rows_per_file` rows; returns the bytes written.
fn encode_files<S: AsRef<str>>(stream: Stream, records: &[Record<S>], rows_per_file: usize, opts: &EncodeOptions) -> usize {
    let mut written = 0;
    for chunk in records.chunks(rows_per_file) {
        let mut b = BatchBuilder::new(stream, true);
        let mut enc = ParquetEncoder::new(b.schema().clone(), opts).expect("encoder");
        for (i, r) in chunk.iter().enumerate() {
            b.append(r, prov(i));
            if b.len() == BATCH_ROWS {
                enc.write(&b.finish().expect("batch")).expect("write");
            }
        }
        if !b.is_empty() {
            enc.write(&b.finish().expect("batch")).expect("write");
        }
        written += enc.take_bytes().len();
        written += enc.close(vec![("citystream.epoch".into(), "0".into())]).expect("close").0.len();
    }
    written
}

/// One way of writing Parquet, for `parquet_variants`.
struct Variant {
    name: &'static str,
    props: WriterProperties,
    skip_arrow_metadata: bool,
    /// Rows per file (`usize::MAX`: one file per stream).
    rows_per_file: usize,
}

fn variants() -> Vec<Variant> {
    // citystream's settings for every column name of the five streams (they are per column name).
    let mut fields: Vec<Field> = Vec::new();
    for stream in Stream::ALL {
        for f in schema(stream, true).fields() {
            if !fields.iter().any(|g| g.name() == f.name()) {
                fields.push(f.as_ref().clone());
            }
        }
    }
    let ours = || writer_properties(&EncodeOptions::default(), &Schema::new(fields.clone())).into_builder();
    // What citystream did before the column shapes: a dictionary and zstd level 1 for every column.
    let uniform = || writer_properties(&EncodeOptions::default(), &Schema::empty()).into_builder();
    let v =
        |name, props: WriterPropertiesBuilder, skip_arrow_metadata, rows_per_file| Variant { name, props: props.build(), skip_arrow_metadata, rows_per_file };
    vec![
        v("citystream", ours(), false, SMALL_FILE_ROWS),
        v("uniform_zstd", uniform(), false, SMALL_FILE_ROWS),
        v("chunk_statistics", ours().set_statistics_enabled(EnabledStatistics::Chunk), false, SMALL_FILE_ROWS),
        v("no_arrow_schema", ours(), true, SMALL_FILE_ROWS),
        v("uniform_snappy", uniform().set_compression(Compression::SNAPPY), false, SMALL_FILE_ROWS),
        v("uncompressed", uniform().set_compression(Compression::UNCOMPRESSED), false, SMALL_FILE_ROWS),
        v("citystream_one_file_per_stream", ours(), false, usize::MAX),
        v("uniform_zstd_one_file_per_stream", uniform(), false, usize::MAX),
    ]
}

/// Writes every stream's pre-built batches as files of `v.rows_per_file` rows; returns the bytes.
fn write_variant(v: &Variant, files: &[Vec<Vec<RecordBatch>>]) -> usize {
    let mut written = 0;
    for stream_files in files {
        for batches in stream_files {
            let opts = ArrowWriterOptions::new().with_properties(v.props.clone()).with_skip_arrow_metadata(v.skip_arrow_metadata);
            let mut w = ArrowWriter::try_new_with_options(Vec::new(), batches[0].schema(), opts).expect("writer");
            for b in batches {
                w.write(b).expect("write");
            }
            written += w.into_inner().expect("close").len();
        }
    }
    written
}

fn bench_all(c: &mut Criterion<ThreadCpu>, corpora: &[Corpus]) {
    let dopts = DecodeOptions::default();
    let eopts = EncodeOptions::default();

    // Each decoder drops what it decoded inside the timed loop, as the source does.
    type Decoder = fn(Stream, &[u8], &DecodeOptions) -> bool;
    let decoders: [(&str, Decoder); 2] = [("decode", |s, v, o| decode(s, v, o).is_ok()), ("decode_borrowed", |s, v, o| decode_borrowed(s, v, o).is_ok())];
    for (group, decoder) in decoders {
        let mut g = c.benchmark_group(group);
        for k in corpora {
            g.throughput(Throughput::Bytes(k.bytes));
            g.bench_function(BenchmarkId::from_parameter(k.stream.name()), |b| {
                b.iter(|| {
                    for v in &k.values {
                        black_box(decoder(k.stream, black_box(v), &dopts));
                    }
                })
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("arrow");
    for k in corpora {
        g.throughput(Throughput::Bytes(k.bytes));
        g.bench_function(BenchmarkId::from_parameter(k.stream.name()), |b| b.iter(|| black_box(build_batches(k.stream, &k.records))));
    }
    g.finish();

    let mut g = c.benchmark_group("parquet");
    for k in corpora {
        let batches = build_batches(k.stream, &k.records);
        g.throughput(Throughput::Bytes(k.bytes));
        g.bench_function(BenchmarkId::from_parameter(k.stream.name()), |b| {
            b.iter(|| {
                let mut enc = ParquetEncoder::new(batches[0].schema(), &eopts).expect("encoder");
                for batch in &batches {
                    enc.write(batch).expect("write");
                }
                black_box(enc.close(Vec::new()).expect("close").0.len())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parquet_small_files");
    for k in corpora {
        g.throughput(Throughput::Bytes(k.bytes));
        g.bench_function(BenchmarkId::from_parameter(k.stream.name()), |b| b.iter(|| black_box(encode_files(k.stream, &k.records, SMALL_FILE_ROWS, &eopts))));
    }
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    for k in corpora {
        g.throughput(Throughput::Bytes(k.bytes));
        g.bench_function(BenchmarkId::from_parameter(k.stream.name()), |b| {
            b.iter(|| {
                let records: Vec<_> = k.values.iter().filter_map(|v| decode_borrowed(k.stream, v, &dopts).ok()).collect();
                black_box(encode_files(k.stream, &records, SMALL_FILE_ROWS, &eopts))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("parquet_variants");
    let total_bytes: u64 = corpora.iter().map(|k| k.bytes).sum();
    g.throughput(Throughput::Bytes(total_bytes));
    for v in variants() {
        let files: Vec<Vec<Vec<RecordBatch>>> =
            corpora.iter().map(|k| k.records.chunks(v.rows_per_file.min(k.records.len())).map(|chunk| build_batches(k.stream, chunk)).collect()).collect();
        let bytes = write_variant(&v, &files);
        OUTPUT_BYTES.with(|o| o.borrow_mut().push((v.name, bytes)));
        g.bench_function(BenchmarkId::from_parameter(v.name), |b| b.iter(|| black_box(write_variant(&v, &files))));
    }
    g.finish();

    // One partition carrying every stream's event times, interleaved as the fleet emits them.
    let mut times: Vec<citystream::contract::EventTime> = Vec::new();
    let n = corpora.iter().map(|k| k.records.len()).min().unwrap_or(0);
    for i in 0..n {
        times.extend(corpora.iter().map(|k| k.records[i].timestamp()));
    }
    let bytes: u64 = corpora.iter().map(|k| k.bytes).sum();
    let clock = EpochClock::new(60_000_000, 120_000_000);
    let id = PartitionId { stream: Stream::Vehicle, partition: 0 };
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(BenchmarkId::from_parameter("all"), |b| {
        b.iter(|| {
            let mut pc = PartitionClock::resume(id, clock, None, Offset::ZERO, Epoch::ZERO);
            let mut sealed = 0u64;
            for (off, &t) in times.iter().enumerate() {
                let class = pc.observe(Offset(off as i64), Some(t));
                black_box(class);
                if off % 4096 == 4095 {
                    // What the source does as its capability moves on: hand out a state, prune.
                    let e = pc.epoch().saturating_sub(1);
                    black_box(pc.resume_state(e));
                    pc.prune(e);
                    sealed += 1;
                }
            }
            black_box(sealed)
        })
    });
    g.finish();

    let stamps: Vec<String> = corpora.iter().flat_map(|k| k.records.iter().map(|r| format_naive(r.timestamp()).to_string())).collect();
    let mut g = c.benchmark_group("timestamp");
    g.throughput(Throughput::Elements(stamps.len() as u64));
    g.bench_function(BenchmarkId::from_parameter("citystream"), |b| {
        b.iter(|| {
            for s in &stamps {
                black_box(parse_timestamp(black_box(s), 0).is_ok());
            }
        })
    });
    g.bench_function(BenchmarkId::from_parameter("chrono"), |b| {
        b.iter(|| {
            for s in &stamps {
                black_box(chrono::NaiveDateTime::parse_from_str(black_box(s), "%Y-%m-%dT%H:%M:%S%.f").is_ok());
            }
        })
    });
    g.finish();
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into())
}

/// Mean seconds per iteration from criterion's `estimates.json`.
fn mean_secs(group: &str, id: &str) -> Option<f64> {
    let path = target_dir().join("criterion").join(group).join(id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e9)
}

fn summary(corpora: &[Corpus], per_stream: usize) {
    let mut rows = Vec::new();
    println!("\n{:<22} {:<16} {:>14} {:>10} {:>12}", "benchmark", "stream", "records/s", "MB/s", "ns/record");
    let mut row = |group: &str, id: &str, records: usize, bytes: u64| {
        let Some(s) = mean_secs(group, id) else { return };
        let (rps, mbps) = (records as f64 / s, bytes as f64 / s / 1e6);
        println!("{group:<22} {id:<16} {rps:>14.0} {mbps:>10.1} {:>12.0}", s * 1e9 / records as f64);
        rows.push(serde_json::json!({"group": group, "stream": id, "records_per_s": rps, "mb_per_s": mbps, "ns_per_record": s * 1e9 / records as f64}));
    };
    for group in ["decode", "decode_borrowed", "arrow", "parquet", "parquet_small_files", "pipeline"] {
        for k in corpora {
            row(group, k.stream.name(), k.records.len(), k.bytes);
        }
    }
    let n = corpora.iter().map(|k| k.records.len()).min().unwrap_or(0) * corpora.len();
    let all_records: usize = corpora.iter().map(|k| k.records.len()).sum();
    let all_bytes: u64 = corpora.iter().map(|k| k.bytes).sum();
    for (name, _) in OUTPUT_BYTES.with(|o| o.borrow().clone()) {
        row("parquet_variants", name, all_records, all_bytes);
    }
    row("route", "all", n, all_bytes);
    for parser in ["citystream", "chrono"] {
        row("timestamp", parser, all_records, 0);
    }
    let variant_bytes: std::collections::BTreeMap<&str, usize> = OUTPUT_BYTES.with(|o| o.borrow().iter().copied().collect());
    println!("\nparquet_variants output bytes: {variant_bytes:?}");
    let report = serde_json::json!({
        "benchmark": "micro",
        "command": "cargo bench --bench pipeline",
        "records_per_stream": per_stream,
        "value_bytes_per_record": corpora.iter().map(|k| (k.stream.name(), k.bytes as f64 / k.records.len() as f64)).collect::<std::collections::BTreeMap<_, _>>(),
        "results": rows,
        "parquet_variants_output_bytes": variant_bytes,
    });
    let path = target_dir().join("bench-micro.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json") + "\n") {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` each benchmark runs once.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let per_stream = match std::env::var("CITYSTREAM_BENCH_RECORDS") {
        Ok(v) if bench_mode => v.replace('_', "").parse().unwrap_or_else(|_| panic!("CITYSTREAM_BENCH_RECORDS={v:?} is not a whole number")),
        _ if bench_mode => 10_000,
        _ => 500,
    };
    let corpora = corpora(per_stream);
    let mut c = Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench_all(&mut c, &corpora);
    c.final_summary();
    if bench_mode {
        summary(&corpora, per_stream);
    }
}
