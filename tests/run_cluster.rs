//! The worker cluster against the real Kafka broker and the real S3 server: exactly once
//! across processes, threads, crashes, restarts with another shape, idle partitions and a
//! second cluster on the same output. Every check of the lake is made by an independent
//! reader (pyarrow, listing files as Athena would) against what Kafka holds.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;

/// The cluster tests share two cores with the broker: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const LONG: Duration = Duration::from_secs(600);

/// Flags of a cluster reading `prefix` into `output`. Commits are cut every 200 ms (not every
/// 10 s), so that these runs of a second or two commit several times and a kill lands between
/// commits, with objects of uncut commits left behind.
fn run_flags(prefix: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--brokers", &brokers(), "--topic-prefix", prefix, "--group", prefix, "--output", output, "--commit-interval", "200ms"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn one_process_two_threads_local_output_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("one"));
    simulate(
        &prefix,
        &["--vehicles", "100", "--events", "100000", "--partitions", "4", "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", "11"],
    );
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let mut p = Proc::start(dir.path(), "run", &cluster_args(1, 2, 0, dir.path(), &run_flags(&prefix, &out_s, &["--until-caught-up", "--window", "5m"])), &[]);
    let status = p.wait(LONG);
    let log = p.output();
    assert!(status.success(), "{log}");
    assert!(log.contains("records committed: 100000"), "{log}");
    let check = lake_check(&out_s, &prefix, 100_000);
    assert!(check.late_rows > 100 && check.dead_letters > 100, "{check:?}");
    // A second run finds nothing new and changes nothing.
    let mut again =
        Proc::start(dir.path(), "again", &cluster_args(1, 2, 0, dir.path(), &run_flags(&prefix, &out_s, &["--until-caught-up", "--window", "5m"])), &[]);
    assert!(again.wait(LONG).success(), "{}", again.output());
    let check2 = lake_check(&out_s, &prefix, 100_000);
    assert_eq!(check2.files, check.files);
    // More data after the final commit — from the same start, so it lies behind every
    // committed epoch — is committed too, none of it taken for already committed.
    simulate(&prefix, &["--vehicles", "50", "--events", "20000", "--partitions", "4", "--seed", "19"]);
    let mut third =
        Proc::start(dir.path(), "third", &cluster_args(1, 2, 0, dir.path(), &run_flags(&prefix, &out_s, &["--until-caught-up", "--window", "5m"])), &[]);
    assert!(third.wait(LONG).success(), "{}", third.output());
    let check3 = lake_check(&out_s, &prefix, 120_000);
    assert!(check3.late_rows >= check.late_rows + 15_000, "old event times arrive late: {check3:?}");
}

#[test]
fn two_processes_on_s3_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("two"));
    simulate(
        &prefix,
        &["--vehicles", "60", "--events", "60000", "--partitions", "4", "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", "12"],
    );
    let output = format!("s3://{}/{}", bucket(), prefix.trim_end_matches('.'));
    let mut procs = start_cluster(dir.path(), "s3", 2, 2, &run_flags(&prefix, &output, &["--until-caught-up", "--window", "5m"]));
    for p in &mut procs {
        let status = p.wait(LONG);
        assert!(status.success(), "{}: {}", p.name, p.output());
    }
    assert!(procs[0].output().contains("records committed: 60000"), "{}", procs[0].output());
    // Consumer-group offsets follow the manifests: at the end, every partition is committed.
    let check = lake_check_with(&output, &prefix, 60_000, &["--expect-group", &prefix]);
    assert!(check.late_rows > 0 && check.dead_letters > 0, "{check:?}");
}

/// Runs a 2-process cluster, kills one process with SIGKILL once `commits` manifests are
/// durable, checks that the survivor stops by itself, then restarts with `-n n2 -w w2`.
fn crash_and_restart(tag: &str, n2: usize, w2: usize) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique(tag));
    simulate(
        &prefix,
        &["--vehicles", "100", "--events", "150000", "--partitions", "4", "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", "13"],
    );
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let flags = run_flags(&prefix, &out_s, &["--until-caught-up", "--window", "1m"]);
    let mut procs = start_cluster(dir.path(), "first", 2, 1, &flags);
    wait_until(LONG, "two commits", || {
        manifests(&out).iter().filter(|m| m["kind"] == "commit").count() >= 2 || procs.iter_mut().any(|p| p.child.try_wait().unwrap().is_some())
    });
    assert!(procs.iter_mut().all(|p| p.child.try_wait().unwrap().is_none()), "the run ended before the crash could be injected: make it longer");
    let victim = (std::process::id() % 2) as usize;
    procs[victim].kill9();
    let survivor = 1 - victim;
    let status = procs[survivor].wait(Duration::from_secs(60));
    assert!(!status.success(), "the survivor must notice the dead peer and exit non-zero: {}", procs[survivor].output());
    let committed_before = manifests(&out).iter().filter(|m| m["kind"] == "commit").count();
    assert!(committed_before >= 2);

    let mut again = start_cluster(dir.path(), "second", n2, w2, &flags);
    for p in &mut again {
        let status = p.wait(LONG);
        assert!(status.success(), "{}: {}", p.name, p.output());
    }
    let check = lake_check(&out_s, &prefix, 150_000);
    assert!(check.manifests as usize > committed_before);
}

#[test]
fn kill_9_then_restart_is_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    crash_and_restart("kill", 2, 1);
}

#[test]
fn restart_with_another_shape_after_a_crash_is_exactly_once() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    crash_and_restart("reshape", 1, 3);
}

fn latest_upper(out: &std::path::Path) -> u64 {
    manifests(out).last().map_or(0, |m| m["upper"].as_u64().unwrap())
}

#[test]
fn empty_and_stopped_partitions_do_not_stall_the_frontier() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("idle"));
    // Two vehicles keyed by device: each topic's data lands in at most 2 of its 4 partitions.
    simulate(&prefix, &["--vehicles", "2", "--events", "2000", "--partitions", "4", "--seed", "14"]);
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let mut p = Proc::start(dir.path(), "live", &cluster_args(1, 2, 0, dir.path(), &run_flags(&prefix, &out_s, &["--window", "1m"])), &[]);
    // 2000 records = 200 fleet steps of 30–60 s from 08:00: the watermark reaches at least
    // 08:00 + 200·30 s − 2 min; its epoch must be sealed although half the partitions are empty.
    let start_epoch = 1_740_816_000 / 60;
    let first = start_epoch + (200 * 30 - 120) / 60 - 1;
    wait_until(Duration::from_secs(180), "the frontier to pass the watermark of batch one", || latest_upper(&out) >= first);
    // Batch two, later in event time, from one vehicle only: the other vehicle's partitions stop.
    simulate(&prefix, &["--vehicles", "1", "--events", "2000", "--partitions", "4", "--seed", "15", "--start", "2025-03-01T12:00:00"]);
    let second = (1_740_830_400 + 400 * 30 - 120) / 60 - 1;
    wait_until(Duration::from_secs(180), "the frontier to pass the watermark of batch two", || latest_upper(&out) >= second);
    p.term();
    let status = p.wait(Duration::from_secs(120));
    assert!(status.success(), "SIGTERM is a clean shutdown: {}", p.output());
    lake_check(&out_s, &prefix, 4000);
}

#[test]
fn a_second_cluster_on_the_same_output_is_fenced() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("zombie"));
    simulate(&prefix, &["--vehicles", "20", "--events", "20000", "--partitions", "2", "--seed", "16"]);
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let mut a = Proc::start(dir.path(), "a", &cluster_args(1, 1, 0, dir.path(), &run_flags(&prefix, &out_s, &["--window", "1m"])), &[]);
    wait_until(LONG, "cluster A's first commit", || manifests(&out).iter().any(|m| m["kind"] == "commit"));
    let mut b = Proc::start(dir.path(), "b", &cluster_args(1, 1, 0, dir.path(), &run_flags(&prefix, &out_s, &["--window", "1m"])), &[]);
    // More data makes both try to commit; exactly one of them must stop with the fence message.
    simulate(&prefix, &["--vehicles", "20", "--events", "5000", "--partitions", "2", "--seed", "17", "--start", "2025-03-02T08:00:00"]);
    let mut loser = None;
    wait_until(Duration::from_secs(180), "one cluster to lose the fence", || {
        for (name, p) in [("a", &mut a), ("b", &mut b)] {
            if let Some(s) = p.child.try_wait().unwrap() {
                loser = Some((name, s));
                return true;
            }
        }
        false
    });
    let (name, status) = loser.unwrap();
    let (lost, won) = if name == "a" { (&a, &b) } else { (&b, &a) };
    assert!(!status.success());
    assert!(lost.output().contains("another citystream cluster is writing to the same output"), "{}", lost.output());
    won.term();
    let won = if name == "a" { &mut b } else { &mut a };
    assert!(won.wait(Duration::from_secs(120)).success(), "{}", won.output());
    // Every epoch is committed once: the chain of manifests is contiguous and never overlaps.
    let ms = manifests(&out);
    let mut upper = 0;
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(m["sequence"].as_u64().unwrap(), i as u64 + 1);
        if i > 0 {
            assert_eq!(m["lower"].as_u64().unwrap(), upper, "manifest {i} overlaps or leaves a gap");
        }
        upper = m["upper"].as_u64().unwrap();
    }
}

#[test]
fn embedded_defaults_run_the_whole_pipeline() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out =
        std::process::Command::new(bin()).arg("run").current_dir(dir.path()).env_remove("CITYSTREAM_BROKERS").env_remove("CITYSTREAM_OUTPUT").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("records committed: 100000"), "{stdout}");
    for s in ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data", "late records", "dead letters", "epochs sealed"] {
        assert!(stdout.contains(s), "summary names {s}: {stdout}");
    }
    let lake = dir.path().join("lake");
    assert!(lake.join("_manifests").is_dir() && lake.join("_dead_letter").is_dir());
    // Independent read: pyarrow sees exactly the committed rows, each (partition, offset) once.
    let script = r#"
import sys, pyarrow.dataset as ds
root = sys.argv[1]
total = 0
for s in ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]:
    t = ds.dataset(f"{root}/{s}", format="parquet", partitioning="hive").to_table()
    keys = set(zip(t.column("_partition").to_pylist(), t.column("_offset").to_pylist()))
    assert len(keys) == t.num_rows, s
    assert str(t.schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    total += t.num_rows
d = ds.dataset(f"{root}/_dead_letter", format="parquet", partitioning="hive").to_table()
print(total + d.num_rows)
"#;
    let py = std::process::Command::new(python()).args(["-c", script, &lake.display().to_string()]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "100000");
}

#[test]
fn launcher_restarts_the_whole_cluster_after_a_crash() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("launch"));
    simulate(
        &prefix,
        &["--vehicles", "100", "--events", "150000", "--partitions", "4", "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", "18"],
    );
    let out = dir.path().join("lake");
    let out_s = out.display().to_string();
    let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/workers/launch.sh");
    let log = std::fs::File::create(dir.path().join("launch.log")).unwrap();
    let mut cmd = std::process::Command::new("bash");
    cmd.args([launcher, "-n", "2", "-w", "1", "--bin", bin(), "--"]).args(run_flags(&prefix, &out_s, &["--until-caught-up", "--window", "1m"]));
    cmd.env("CITYSTREAM_LAUNCH_LOGS", dir.path().join("logs")).stdout(log.try_clone().unwrap()).stderr(log);
    let mut launcher = cmd.spawn().unwrap();
    wait_until(LONG, "two commits", || manifests(&out).iter().filter(|m| m["kind"] == "commit").count() >= 2);
    // Kill one worker process (not the launcher) with SIGKILL.
    let children = std::process::Command::new("pgrep").args(["-P", &launcher.id().to_string(), "-f", "citystream run"]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&children.stdout).split_whitespace().map(str::to_owned).collect();
    assert_eq!(pids.len(), 2, "two worker processes: {pids:?}");
    assert!(std::process::Command::new("kill").args(["-KILL", &pids[0]]).status().unwrap().success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = launcher.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < LONG, "launcher did not finish");
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(dir.path().join("launch.log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("restarting the whole cluster"), "{log}");
    lake_check(&out_s, &prefix, 150_000);
}
