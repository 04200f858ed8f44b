//! Bad configuration and environment fail fast, exit non-zero and say what is wrong, naming it:
//! unreachable brokers (the address), a missing bucket (its name), bad S3 credentials, an
//! unknown topic, `-n` > 1 without `-h`, a hostfile with fewer lines than `-n`, a port in use,
//! an unwritable output directory, an invalid duration, bad Kafka security settings, a
//! `--metrics-addr` in use or unparsable.
//!
//! Against the real Kafka broker and the real S3 server (`CITYSTREAM_BROKERS` and `AWS_*` from
//! `scripts/with-services.sh`). Every run is bounded by [`FAST`]: a run that has not failed
//! by then is killed and the test fails (a hang guard; the issue asks for at most 60 s).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// Bound on every failing run.
const FAST: Duration = Duration::from_secs(60);

/// What a finished run printed.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    /// Asserts a failure whose message holds every one of `needles`; returns stderr.
    fn fails_naming(&self, needles: &[&str]) -> &str {
        assert!(self.code.is_some_and(|c| c != 0), "expected a non-zero exit, got {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "the error does not name {n:?}:\n{}", self.stderr);
        }
        assert!(self.elapsed < FAST, "took {:?}", self.elapsed);
        &self.stderr
    }
}

/// Runs `citystream args` with no inherited `CITYSTREAM_*` variable (the `AWS_*` ones stay)
/// plus `env`; kills it and fails if it runs longer than [`FAST`].
fn citystream(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let b = common::run_bounded(args, env, FAST);
    Outcome { code: b.code, stdout: b.stdout, stderr: b.stderr, elapsed: b.elapsed }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn unreachable_brokers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = format!("127.0.0.1:{}", common::free_port());
    // The default --connect-timeout (10 s) applies.
    let o = citystream(&["run", "--brokers", &brokers, "--until-caught-up", "--output", &path(&dir.path().join("lake"))], &[]);
    o.fails_naming(&[&brokers, "cannot reach Kafka", "--brokers"]);
    let o = citystream(&["simulate", "--brokers", &brokers, "--connect-timeout", "3s", "--events", "10"], &[]);
    o.fails_naming(&[&brokers]);
}

#[test]
fn unknown_topic_is_named_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = common::brokers();
    let prefix = format!("{}.", common::unique("nosuch"));
    let o = citystream(&["run", "--brokers", &brokers, "--topic-prefix", &prefix, "--until-caught-up", "--output", &path(&dir.path().join("lake"))], &[]);
    o.fails_naming(&[&format!("{prefix}vehicle_data"), "does not exist", "--topic-prefix"]);
    // Looking for it did not create it (the test broker auto-creates topics on request).
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(!md.topics().iter().any(|t| t.name().starts_with(&prefix)), "topics of {prefix} were created");
}

#[test]
fn missing_bucket_is_named() {
    let bucket = common::unique("no-such-bucket").replace('_', "-");
    let output = format!("s3://{bucket}/lake");
    let o = citystream(&["run", "--output", &output], &[]);
    o.fails_naming(&["bucket", &bucket, "does not exist"]);
    // Nothing created the bucket on the way (some servers create one on the first write).
    let again = citystream(&["run", "--output", &output], &[]);
    again.fails_naming(&["bucket", &bucket, "does not exist"]);
}

#[test]
fn bad_s3_credentials_are_reported_without_the_secret() {
    let secret = format!("s3-secret-MARK-{}", common::unique("x"));
    let output = format!("s3://{}/{}", common::bucket(), common::unique("badcreds"));
    let o = citystream(&["run", "--output", &output], &[("AWS_SECRET_ACCESS_KEY", &secret)]);
    let err = o.fails_naming(&["credentials", "AWS_SECRET_ACCESS_KEY", &output]);
    assert!(!err.contains(&secret) && !o.stdout.contains(&secret), "the secret leaked:\n{err}");
    let o = citystream(&["run", "--output", &output], &[("AWS_ACCESS_KEY_ID", "no-such-key-id"), ("AWS_SECRET_ACCESS_KEY", &secret)]);
    let err = o.fails_naming(&["credentials", "AWS_ACCESS_KEY_ID"]);
    assert!(!err.contains(&secret), "the secret leaked:\n{err}");
}

#[test]
fn processes_without_hostfile() {
    let o = citystream(&["run", "-n", "2", "-p", "0"], &[]);
    o.fails_naming(&["-h/--hostfile", "-n 2"]);
    let o = citystream(&["run", "-n", "2", "-p", "2", "-h", "/nonexistent"], &[]);
    o.fails_naming(&["-p/--process"]);
    let o = citystream(&["run", "-n", "2", "-h", "/nonexistent/hosts"], &[]);
    o.fails_naming(&["-h/--hostfile", "/nonexistent/hosts"]);
}

#[test]
fn hostfile_with_fewer_lines_than_processes() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "# two of three\n127.0.0.1:7101\n\n127.0.0.1:7102\n").unwrap();
    let o = citystream(&["run", "-n", "3", "-p", "0", "-h", &path(&hosts)], &[]);
    o.fails_naming(&["-h/--hostfile", &path(&hosts), "2 addresses", "-n is 3"]);
    std::fs::write(&hosts, "127.0.0.1:7101\nlocalhost\n").unwrap();
    let o = citystream(&["run", "-n", "2", "-p", "0", "-h", &path(&hosts)], &[]);
    o.fails_naming(&["-h/--hostfile", "\"localhost\"", "host:port"]);
}

#[test]
fn port_in_use_is_named_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("{addr}\n127.0.0.1:{}\n", common::free_port())).unwrap();
    let lake = dir.path().join("lake");
    let o = citystream(&["run", "-n", "2", "-p", "0", "-h", &path(&hosts), "--output", &path(&lake)], &[]);
    o.fails_naming(&[&addr, "in use", "-h/--hostfile"]);
    assert!(common::manifests(&lake).is_empty(), "process 0 claimed the output before failing");
}

#[test]
fn unwritable_output_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that cannot be created: its parent is a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let below = file.join("lake");
    let o = citystream(&["run", "--output", &path(&below)], &[]);
    o.fails_naming(&["--output", &path(&below), "cannot create directory"]);

    // A directory without write permission (not testable as root, who may write anyway).
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), "x").is_ok() {
        eprintln!("note: running as a user who may write a 0555 directory (root); the permission case is not checked");
    } else {
        let o = citystream(&["run", "--output", &path(&ro)], &[]);
        o.fails_naming(&["--output", &path(&ro), "writable"]);
    }
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn unknown_aggregate_tables_and_a_horizon_below_the_lateness_name_the_flag() {
    let o = citystream(&["run", "--aggregates", "vehicle_speed_minute,speeds"], &[]);
    o.fails_naming(&["--aggregates", "\"speeds\"", "vehicle_latest"]);
    let o = citystream(&["run", "--aggregate-horizon", "1m", "--lateness", "2m"], &[]);
    o.fails_naming(&["--aggregate-horizon", "--lateness"]);
}

#[test]
fn invalid_durations_name_the_flag() {
    for (flag, value) in [("--window", "soon"), ("--lateness", "2 fortnights"), ("--connect-timeout", "5")] {
        let o = citystream(&["run", flag, value], &[]);
        o.fails_naming(&[flag, value]);
    }
    let o = citystream(&["run"], &[("CITYSTREAM_WINDOW", "a while")]);
    o.fails_naming(&["--window", "a while"]);
    let o = citystream(&["run", "--window", "0s"], &[]);
    o.fails_naming(&["--window", "at least"]);
    let o = citystream(&["simulate", "--duration", "forever"], &[]);
    o.fails_naming(&["--duration", "forever"]);
    let o = citystream(&["run", "--stall-timeout", "10s", "--stall-exit", "5s"], &[]);
    o.fails_naming(&["--stall-exit", "--stall-timeout", "longer"]);
    let o = citystream(&["run", "--stall-timeout", "10ms"], &[]);
    o.fails_naming(&["--stall-timeout", "at least"]);
    let o = citystream(&["run", "--commit-interval", "often"], &[]);
    o.fails_naming(&["--commit-interval", "often"]);
    let o = citystream(&["run", "--commit-interval", "1ms"], &[]);
    o.fails_naming(&["--commit-interval", "at least"]);
}

#[test]
fn invalid_object_sizes_name_the_flag() {
    let o = citystream(&["run", "--target-object-size", "12 parsecs"], &[]);
    o.fails_naming(&["--target-object-size", "unknown unit"]);
    let o = citystream(&["run", "--target-object-size", "4KiB"], &[]);
    o.fails_naming(&["--target-object-size", "at least 1MiB"]);
    let o = citystream(&["run"], &[("CITYSTREAM_TARGET_OBJECT_SIZE", "big")]);
    o.fails_naming(&["--target-object-size", "big"]);
}

#[test]
fn invalid_kafka_prefetch_names_the_flag() {
    let o = citystream(&["run", "--brokers", "127.0.0.1:1", "--kafka-prefetch", "1KiB"], &[]);
    o.fails_naming(&["--kafka-prefetch", "at least 64KiB"]);
    let o = citystream(&["run"], &[("CITYSTREAM_KAFKA_PREFETCH", "lots")]);
    o.fails_naming(&["--kafka-prefetch", "lots"]);
}

#[test]
fn bad_kafka_security_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let lake = path(&dir.path().join("lake"));
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut a = vec!["run", "--brokers", "127.0.0.1:9", "--output", &lake];
        a.extend_from_slice(extra);
        citystream(&a, env)
    };
    run(&["--kafka-sasl-username", "alice"], &[]).fails_naming(&["CITYSTREAM_KAFKA_SASL_PASSWORD"]);
    run(&["--kafka-security-protocol", "sasl_ssl"], &[("CITYSTREAM_KAFKA_SASL_PASSWORD", "pw")]).fails_naming(&["--kafka-sasl-username"]);
    run(&["--kafka-ca", "/nonexistent/ca.pem"], &[]).fails_naming(&["--kafka-ca", "/nonexistent/ca.pem"]);
    run(&["--kafka-security-protocol", "tls"], &[]).fails_naming(&["--kafka-security-protocol", "sasl_ssl"]);
    run(&["--kafka-option", "no.such.property=1"], &[]).fails_naming(&["--kafka-option", "no.such.property"]);
    run(&[], &[("CITYSTREAM_KAFKA_OPTIONS", "socket.timeout.ms=100;fetch.wait.max.ms=often")]).fails_naming(&["--kafka-option", "fetch.wait.max.ms"]);
    // The password is never a flag (it would show in `ps`).
    run(&["--kafka-sasl-password", "pw"], &[]).fails_naming(&["--kafka-sasl-password"]);
    citystream(&["simulate", "--kafka-sasl-username", "alice", "--events", "1"], &[]).fails_naming(&["CITYSTREAM_KAFKA_SASL_PASSWORD"]);
}

#[test]
fn a_metrics_address_in_use_or_unparsable_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    // The embedded source: no Kafka needed, so the endpoint is the only thing that can fail.
    let o = citystream(&["run", "--output", &path(&lake), "--metrics-addr", &addr], &[]);
    o.fails_naming(&["--metrics-addr", &addr, "already in use"]);
    let o = citystream(&["run", "--output", &path(&lake), "--metrics-addr", "metrics-here"], &[]);
    o.fails_naming(&["--metrics-addr", "metrics-here", "HOST:PORT"]);
    let o = citystream(&["run", "--output", &path(&lake)], &[("CITYSTREAM_METRICS_ADDR", "127.0.0.1:99999")]);
    o.fails_naming(&["--metrics-addr", "127.0.0.1:99999"]);
    assert!(!lake.join("_manifests").exists(), "nothing was claimed or written before failing");
}
