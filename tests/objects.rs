//! Object sizes against the real Kafka broker: on the original producer's time model (a few
//! records per stream and minute of event time) a commit writes one object per (stream, kind,
//! hour) per process, not one per epoch; and a live cluster commits at its commit interval.
//! Exactly once is checked by the independent reader (pyarrow) as everywhere.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// These tests share two cores with the broker: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const LONG: Duration = Duration::from_secs(600);

/// What tests/python/object_stats.py says about a lake.
#[derive(Debug, serde::Deserialize)]
struct Stats {
    objects: u64,
    commits: u64,
    max_per_key_commit: u64,
    event_hours: u64,
    per_epoch_objects: u64,
    rows: u64,
}

fn object_stats(output: &std::path::Path) -> Stats {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/object_stats.py");
    let out = Command::new(python()).args([script, "--output", &output.display().to_string(), "--window-seconds", "60"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "object_stats failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn the_original_producers_time_model_gets_one_object_per_commit_and_hour_not_per_epoch() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("orig"));
    let records: u64 = 50_000;
    // The original producer: one clock per device advancing 30–60 s per step, the step's five
    // records sharing its timestamp, keys = record ids over 4 partitions, a few late and
    // malformed records.
    simulate(
        &prefix,
        &[
            "--time-model",
            "original",
            "--vehicles",
            "3",
            "--key",
            "id",
            "--partitions",
            "4",
            "--events",
            &records.to_string(),
            "--late-fraction",
            "0.002",
            "--malformed-fraction",
            "0.001",
            "--seed",
            "17",
        ],
    );
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    // Default commit interval and object size: what a new user gets.
    let args: Vec<String> = ["run", "-w", "2", "--brokers", &brokers(), "--topic-prefix", &prefix, "--group", &prefix, "--output", &out_s, "--until-caught-up"]
        .map(str::to_owned)
        .to_vec();
    let mut p = Proc::start(dir.path(), "run", &args, &[]);
    assert!(p.wait(LONG).success(), "{}", p.output());
    assert!(p.output().contains(&format!("records committed: {records}")), "{}", p.output());

    let check = lake_check(&out_s, &prefix, records);
    assert!(check.late_rows > 0 && check.dead_letters > 0, "the input has late and malformed records: {check:?}");
    let stats = object_stats(&out);
    eprintln!("original time model: {stats:?}, lake check {check:?}");
    assert_eq!(stats.rows, records);
    // One process: at most one object per (stream, kind, hour) in each commit…
    assert_eq!(stats.max_per_key_commit, 1, "{stats:?}");
    // …so at most (5 streams × data, late, dead letters) × event hours × processes × commits.
    let (outputs, processes) = (15, 1);
    assert!(stats.objects <= outputs * stats.event_hours * processes * stats.commits, "{stats:?}");
    // And at least 20 × fewer than one object per epoch and stream would have been.
    assert!(stats.objects * 20 <= stats.per_epoch_objects, "{stats:?}");
}

#[test]
fn a_live_cluster_commits_at_its_commit_interval() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("live"));
    // Topics first (the run waits for them), then records arriving in real time for ≈ 24 s.
    simulate(&prefix, &["--vehicles", "20", "--events", "100", "--partitions", "2", "--start", "2025-03-01T08:00:00"]);
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let interval = Duration::from_secs(2);
    let args: Vec<String> =
        ["run", "-w", "2", "--brokers", &brokers(), "--topic-prefix", &prefix, "--group", &prefix, "--output", &out_s, "--commit-interval", "2s"]
            .map(str::to_owned)
            .to_vec();
    let mut run = Proc::start(dir.path(), "run", &args, &[]);
    let producer_args: Vec<String> = [
        "simulate",
        "--brokers",
        &brokers(),
        "--topic-prefix",
        &prefix,
        "--vehicles",
        "20",
        "--events",
        "12000",
        "--rate",
        "500",
        "--partitions",
        "2",
        "--late-fraction",
        "0.005",
        "--seed",
        "5",
        "--start",
        "2025-03-01T09:00:00",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut producer = Proc::start(dir.path(), "producer", &producer_args, &[]);

    // When each commit became visible, while records keep arriving.
    let mut seen = 0;
    let mut commits: Vec<Instant> = Vec::new();
    while alive(&mut producer) {
        assert!(alive(&mut run), "the cluster stopped:\n{}", run.output());
        let n = manifests(&out).iter().filter(|m| m["kind"] == "commit").count();
        if n > seen {
            seen = n;
            commits.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(producer.wait(LONG).success(), "{}", producer.output());
    run.term();
    assert!(run.wait(LONG).success(), "{}", run.output());
    lake_check(&out_s, &prefix, 12_100);

    // Committed data is never older than the interval plus slack: while records arrive, commits
    // follow each other at the interval (the slack covers sealing, uploading and a loaded
    // machine; without interval commits there would be none until shutdown).
    let gaps: Vec<Duration> = commits.windows(2).map(|w| w[1] - w[0]).collect();
    let slack = Duration::from_secs(6);
    eprintln!("live commits: {} while producing, gaps {gaps:?}", commits.len());
    assert!(commits.len() >= 5, "only {} commits in ≈ 24 s of live input at a 2 s interval", commits.len());
    let worst = gaps.iter().max().copied().unwrap_or_default();
    assert!(worst <= interval + slack, "a commit came {worst:?} after the previous one (interval {interval:?})");
}
