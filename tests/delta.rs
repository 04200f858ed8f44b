//! The Delta tables against the real S3 server of `scripts/services.sh` (and the real Kafka
//! broker where a cluster runs):
//! - an ambiguous Delta commit (the log entry lands, the answer is lost) followed by the
//!   publisher's retry publishes once; two publishers of one chain publish once;
//! - a reader polling the Delta tables while a cluster is killed with SIGKILL again and again
//!   sees no duplicate and only rows that end up in the final lake, while a Hive-layout read at
//!   the same moments is recorded to show the difference (tests/python/delta_poll.py);
//! - compaction and vacuum against a live 2-process cluster: the rows of every table version
//!   before and after a compaction are identical, the file count goes down, no reader error.

mod common;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use citystream::commit::manifest::{self, FORMAT, FileEntry, Manifest, ManifestKind};
use citystream::contract::Stream;
use citystream::delta::Table;
use citystream::delta::publish::Publisher;
use citystream::epoch::{Epoch, EpochClock};
use citystream::lake::{FileKind, Lake};
use common::*;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result,
};
use serde_json::json;

/// Passes everything through, except that the first `lose` writes of a Delta log entry
/// (`_delta_log/<version>.json`) are executed and then answered with an error, as when the
/// connection drops after the server committed the request.
#[derive(Debug)]
struct LoseCommitReplies {
    inner: Arc<dyn ObjectStore>,
    lose: AtomicUsize,
    lost: AtomicUsize,
}

impl fmt::Display for LoseCommitReplies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoseCommitReplies({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LoseCommitReplies {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await;
        let is_commit = location.as_ref().contains("_delta_log/") && location.as_ref().ends_with(".json") && !location.as_ref().contains("_commit_");
        if result.is_ok() && is_commit && self.lose.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.lost.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic { store: "test", source: "connection reset after the request was sent (injected)".into() });
        }
        result
    }
    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn s3_lake(tag: &str) -> Lake {
    Lake::open(&format!("s3://{}/{}", bucket(), unique(tag))).unwrap()
}

/// Manifest `sequence` committing `files` objects of the vehicle stream (the objects need not
/// exist: publishing only writes the log).
fn manifest_with(sequence: u64, files: usize) -> Manifest {
    let files = (0..files)
        .map(|i| FileEntry {
            path: format!("vehicle_data/date=2025-03-01/hour=10/vehicle_data-e{:010}-r{i}.parquet", sequence),
            stream: Stream::Vehicle,
            kind: FileKind::Data,
            epoch: Epoch(sequence),
            last_epoch: Epoch(sequence),
            partitions: vec![0],
            rows: 10,
            bytes: 1000,
            stats: Some(json!({"numRecords": 10}).to_string()),
            aggregate: None,
        })
        .collect();
    Manifest {
        format: FORMAT,
        sequence,
        kind: if sequence == 1 { ManifestKind::Claim } else { ManifestKind::Commit },
        lower: Epoch(sequence.saturating_sub(1)),
        upper: Epoch(sequence),
        clock: EpochClock::new(60_000_000, 120_000_000),
        topic_prefix: String::new(),
        run: "test".into(),
        written_at: manifest::now_rfc3339(),
        files,
        partitions: vec![],
        cluster: None,
        removed: vec![],
        aggregates: vec![],
    }
}

/// Every add action in the table's log, and its version.
async fn adds_and_version(lake: &Lake, table: Table) -> (Vec<String>, u64, u64) {
    let t = lake.delta().open(table).await.unwrap().expect("the table exists");
    let snapshot = t.snapshot().unwrap();
    let files: Vec<String> = snapshot.log_data().iter().map(|f| f.path().to_string()).collect();
    let txn = snapshot.transaction_version(t.log_store().as_ref(), table.app_id()).await.unwrap().unwrap_or(0) as u64;
    (files, t.version().unwrap(), txn)
}

#[test]
fn an_ambiguous_delta_commit_and_a_second_publisher_publish_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = s3_lake("delta-ambiguous");
    let lossy = Arc::new(LoseCommitReplies { inner: plain.delta().store.clone(), lose: AtomicUsize::new(0), lost: AtomicUsize::new(0) });
    let wrapped = lossy.clone();
    let lake = plain.clone().wrap_delta_store(move |_| wrapped);
    rt.block_on(async {
        let chain: Vec<Manifest> = (1..=3).map(|s| manifest_with(s, if s == 1 { 0 } else { 2 })).collect();
        for m in &chain {
            manifest::write(&plain, m).await.unwrap();
        }
        let mut publisher = Publisher::open(&lake, "test", Table::all()).await.unwrap();
        // Every table's first publication loses its answer: the log entry is there, the
        // publisher is told it failed, retries, and must find its manifests already in.
        lossy.lose.store(Table::all().len(), Ordering::SeqCst);
        publisher.publish(&chain[..2], 2).await.unwrap();
        assert_eq!(lossy.lost.load(Ordering::SeqCst), Table::all().len(), "every table's commit reply was lost once");
        let (files, version, txn) = adds_and_version(&plain, Table::Stream(Stream::Vehicle)).await;
        assert_eq!((files.len(), version, txn), (2, 1, 2), "one commit (version 1) with manifest 2's two objects, txn 2: {files:?}");
        for t in Table::all() {
            let (_, version, txn) = adds_and_version(&plain, t).await;
            assert_eq!((version, txn), (1, 2), "{t:?}: published once");
        }

        // A second publisher of the same chain (a restarted cluster next to a zombie) and the
        // first one publish manifest 3 at the same time: one commit per table, no double add.
        let mut second = Publisher::open(&plain, "second", Table::all()).await.unwrap();
        let (a, b) = tokio::join!(publisher.publish(&chain[2..], 3), second.catch_up(3));
        a.unwrap();
        b.unwrap();
        let (files, version, txn) = adds_and_version(&plain, Table::Stream(Stream::Vehicle)).await;
        assert_eq!(files.len(), 4, "{files:?}");
        assert_eq!((version, txn), (2, 3));
        let mut unique_files = files.clone();
        unique_files.sort();
        unique_files.dedup();
        assert_eq!(unique_files.len(), files.len(), "no object added twice");

        // Catching up again changes nothing.
        let mut third = Publisher::open(&plain, "third", Table::all()).await.unwrap();
        third.catch_up(3).await.unwrap();
        assert_eq!(third.summary().commits, 0);
        let (_, version, _) = adds_and_version(&plain, Table::DeadLetter).await;
        assert_eq!(version, 2);
    });
}

#[test]
fn a_publisher_commits_each_manifest_once_and_checkpoints_every_interval() {
    // The publisher keeps no file list: it counts its own versions and writes checkpoints
    // through the kernel. Past the interval, the log must hold every object once, the txn of
    // the last manifest, and a checkpoint at the round version that a reader starts from.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lake = s3_lake("delta-checkpoint");
    let table = Table::Stream(Stream::Vehicle);
    let last = citystream::delta::CHECKPOINT_INTERVAL + 2;
    rt.block_on(async {
        let mut publisher = Publisher::open(&lake, "test", vec![table]).await.unwrap();
        for sequence in 1..=last {
            publisher.publish(&[manifest_with(sequence, if sequence == 1 { 0 } else { 1 })], sequence).await.unwrap();
        }
        assert_eq!((publisher.summary().commits, publisher.summary().files), (last, last - 1));
        let checkpoint = Path::from(format!("{}/_delta_log/_last_checkpoint", table.dir()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while lake.store.head(&checkpoint).await.is_err() {
            assert!(Instant::now() < deadline, "no checkpoint of {} within 60 s", table.name());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pointer = lake.store.get(&checkpoint).await.unwrap().bytes().await.unwrap();
        let pointer: serde_json::Value = serde_json::from_slice(&pointer).unwrap();
        assert_eq!(pointer["version"], json!(citystream::delta::CHECKPOINT_INTERVAL), "{pointer}");

        let (files, version, txn) = adds_and_version(&lake, table).await;
        assert_eq!((version, txn), (last, last));
        let mut unique_files = files.clone();
        unique_files.sort();
        unique_files.dedup();
        assert_eq!((files.len(), unique_files.len()), (last as usize - 1, last as usize - 1), "every object once");

        // A publisher opened now reads the log from the checkpoint and has nothing to add.
        let mut again = Publisher::open(&lake, "again", vec![table]).await.unwrap();
        again.catch_up(last).await.unwrap();
        assert_eq!(again.summary().commits, 0);
    });
}

/// Flags of a cluster reading `prefix` into `output`, committing every 300 ms.
fn run_flags(prefix: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> =
        ["--brokers", &brokers(), "--topic-prefix", prefix, "--group", prefix, "--output", output, "--commit-interval", "300ms", "--window", "1m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start_producer(dir: &std::path::Path, prefix: &str, events: u64, rate: u64, seed: u64) -> Proc {
    start_live_producer(dir, prefix, 50, events, rate, seed)
}

/// Starts tests/python/delta_poll.py polling `output` until `stop` exists.
fn start_poller(dir: &std::path::Path, output: &str, prefix: &str, stop: &std::path::Path, result: &std::path::Path) -> std::process::Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/delta_poll.py");
    std::process::Command::new(python())
        .args([script, "--output", output, "--prefix", prefix, "--stop", &stop.display().to_string(), "--result", &result.display().to_string()])
        .stdout(std::fs::File::create(dir.join("poller.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("poller.err")).unwrap())
        .spawn()
        .unwrap()
}

/// Stops the poller and returns its result.
fn stop_poller(dir: &std::path::Path, mut poller: std::process::Child, stop: &std::path::Path, result: &std::path::Path) -> serde_json::Value {
    std::fs::write(stop, "stop").unwrap();
    let started = Instant::now();
    while poller.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(300), "the poller did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = std::fs::read_to_string(dir.join("poller.err")).unwrap_or_default();
    let text = std::fs::read_to_string(result).unwrap_or_else(|_| panic!("the poller wrote no result: {err}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_delta_reader_polling_through_kill_9_sees_only_committed_rows_once() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("dpoll"));
    // A local output, so that the poller (which reads every file of every table twice per
    // poll) polls often; the S3 path of the same code is covered by the other tests here.
    let output = dir.path().join("lake").display().to_string();
    let (first, live) = (3_000u64, 30_000u64);
    simulate(
        &prefix,
        &["--vehicles", "50", "--events", &first.to_string(), "--partitions", "2", "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", "7"],
    );
    // ~30 s of live records: every attempt below reads some of them and commits while it runs.
    let mut producer = start_producer(dir.path(), &prefix, live, 1_000, 8);
    let (stop, result) = (dir.path().join("stop"), dir.path().join("result.json"));
    let poller = start_poller(dir.path(), &output, &prefix, &stop, &result);
    let flags = run_flags(&prefix, &output, &[]);
    let kills = 4;
    let mut commits_before_kills = Vec::new();
    for k in 0..kills {
        let mut procs = start_cluster(dir.path(), &format!("attempt{k}"), 1, 2, &flags);
        wait_until(Duration::from_secs(120), "a commit", || log_count(&procs[0], "manifest committed") >= 1 || !alive(&mut procs[0]));
        // Kill at a different moment after the first commit each time: mid-commit, mid-publish,
        // between commits.
        std::thread::sleep(Duration::from_millis(400 + 700 * k as u64));
        assert!(alive(&mut procs[0]), "the run ended before the kill: {}", procs[0].output());
        commits_before_kills.push(log_count(&procs[0], "manifest committed"));
        procs[0].kill9();
    }
    eprintln!("commits before each kill: {commits_before_kills:?}");
    let status = producer.wait(Duration::from_secs(600));
    assert!(status.success(), "the producer failed: {}", producer.output());
    let mut last = start_cluster(dir.path(), "final", 1, 2, &run_flags(&prefix, &output, &["--until-caught-up"]));
    let status = last[0].wait(Duration::from_secs(600));
    assert!(status.success(), "{}", last[0].output());
    let r = stop_poller(dir.path(), poller, &stop, &result);
    eprintln!("DELTA-POLL-RESULT {r}");
    let check = lake_check(&output, &prefix, first + live);
    assert_eq!(r["final_rows"].as_u64().unwrap(), check.kafka_records, "{r}");
    assert!(r["polls"].as_u64().unwrap() >= 5, "too few polls to mean anything: {r}");
    assert!(r["polls_with_rows"].as_u64().unwrap() >= 3, "{r}");
    assert_eq!(r["delta_duplicates"], 0, "a Delta reader saw a record twice: {r}");
    assert_eq!(r["delta_not_final"], 0, "a Delta reader saw a record that is not in the final lake: {r}");
    assert_eq!(r["delta_errors"], 0, "{r}");
}

/// Runs `citystream <args>` to completion and returns its stdout.
fn citystream(args: &[&str]) -> String {
    let out = std::process::Command::new(bin()).args(args).output().unwrap();
    assert!(out.status.success(), "citystream {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Active files of every table, through Delta.
fn active_files(lake: &Lake) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut n = 0;
        for t in Table::all() {
            if let Some(t) = lake.delta().open(t).await.unwrap() {
                n += t.snapshot().unwrap().log_data().num_files();
            }
        }
        n
    })
}

#[test]
fn compaction_and_vacuum_against_a_live_two_process_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("dcompact"));
    let output = format!("s3://{}/{}", bucket(), prefix.trim_end_matches('.'));
    let lake = Lake::open(&output).unwrap();
    let (first, live) = (4_000u64, 30_000u64);
    simulate(
        &prefix,
        &["--vehicles", "50", "--events", &first.to_string(), "--partitions", "2", "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", "11"],
    );
    // ~30 s of live records, so that the cluster appends throughout the compaction and vacuum.
    let mut producer = start_producer(dir.path(), &prefix, live, 1_000, 12);
    let (stop, result) = (dir.path().join("stop"), dir.path().join("result.json"));
    let poller = start_poller(dir.path(), &output, &prefix, &stop, &result);
    let mut procs = start_cluster(dir.path(), "live", 2, 1, &run_flags(&prefix, &output, &[]));
    wait_until(Duration::from_secs(120), "commits", || log_count(&procs[0], "manifest committed") >= 4 || !alive(&mut procs[0]));
    assert!(alive(&mut procs[0]), "{}", procs[0].output());

    // Compact every (long sealed: the events are of 2025) hour while the cluster appends.
    wait_until(Duration::from_secs(120), "objects published to the tables", || active_files(&lake) >= 20);
    let report = citystream(&["compact", "--output", &output, "--older-than", "0s", "--target-size", "1MiB"]);
    eprintln!("{report}");
    // `<table> files <before> → <after> (…)`, per table.
    let counts: Vec<(usize, usize)> = report
        .lines()
        .filter_map(|l| {
            let rest = l.split(" files ").nth(1)?;
            let mut it = rest.split_whitespace();
            let before = it.next()?.parse().ok()?;
            let after = it.nth(1)?.parse().ok()?;
            Some((before, after))
        })
        .collect();
    assert_eq!(counts.len(), 6, "{report}");
    let (before, after) = counts.iter().fold((0, 0), |(b, a), (x, y)| (b + x, a + y));
    assert!(after < before, "compaction reduced nothing ({before} → {after}): {report}");
    assert!(report.contains("rewrote"), "{report}");
    // What a query returns did not change: every compaction's version holds the rows of the
    // version before it (checked before the vacuum deletes the older versions' files).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/delta_poll.py");
    let out = std::process::Command::new(python()).args([script, "--output", &output, "--prefix", &prefix, "--check-compactions"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compactions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("compactions: {compactions}");
    assert!(compactions["compactions_checked"].as_u64().unwrap() > 0, "{compactions}");
    assert_eq!(compactions["compactions_differing"], json!([]), "a compaction changed what a query returns: {compactions}");
    // A vacuum now deletes nothing a reader of the last 5 s could need.
    std::thread::sleep(Duration::from_secs(6));
    let vacuum = citystream(&["vacuum", "--output", &output, "--retention", "5s", "--allow-short-retention"]);
    eprintln!("{vacuum}");
    let deleted: usize = vacuum.lines().filter_map(|l| l.split(" deleted ").nth(1)?.split_whitespace().next()?.parse::<usize>().ok()).sum();
    assert!(deleted > 0, "vacuum deleted none of the compacted inputs: {vacuum}");

    let status = producer.wait(Duration::from_secs(600));
    assert!(status.success(), "the producer failed: {}", producer.output());
    terminate_cleanly(&mut procs, Duration::from_secs(120));
    let mut last = start_cluster(dir.path(), "final", 2, 1, &run_flags(&prefix, &output, &["--until-caught-up"]));
    wait_all_succeed(&mut last, Duration::from_secs(600));
    let r = stop_poller(dir.path(), poller, &stop, &result);
    eprintln!("DELTA-COMPACT-RESULT {r} files {before} → {after}");
    lake_check_with(&output, &prefix, first + live, &["--compacted"]);
    assert_eq!(r["delta_errors"], 0, "a Delta reader failed during compaction or vacuum: {r}");
    assert_eq!(r["delta_duplicates"], 0, "{r}");
}
