//! Security against the real services: Kafka over TLS with SASL/SCRAM (a broker with a SASL_SSL
//! listener and a CA this test creates), S3 credentials that may not write the output, and
//! secrets that never appear in logs or error messages.
//!
//! The SASL_SSL broker is a second Kafka started by `scripts/services.sh up kafka` with its own
//! port offset and state directory (so the shared broker of the other tests is untouched) and
//! `CITYSTREAM_KAFKA_SASL_SSL_DIR` pointing at the TLS and SCRAM material made here with
//! `openssl`; it is stopped when the test ends, also on failure. The S3 tests use the shared
//! SeaweedFS (`AWS_*` and `CITYSTREAM_S3_READONLY_*` from `scripts/with-services.sh`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bound on every run of the binary (a hang guard).
const LIMIT: Duration = Duration::from_secs(120);
/// Bound on runs that must fail fast.
const FAST: Duration = Duration::from_secs(60);

/// What a finished run printed.
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Asserts success; returns stdout.
    fn succeeds(&self) -> &str {
        assert!(self.ok, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts a fast failure whose error names every one of `needles`.
    fn fails_naming(&self, needles: &[&str]) {
        assert!(!self.ok, "expected a failure\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        for n in needles {
            assert!(self.stderr.contains(n), "the error does not name {n:?}:\n{}", self.stderr);
        }
        assert!(self.elapsed < FAST, "took {:?}", self.elapsed);
    }

    /// Asserts that `secret` appears nowhere in what the run printed.
    fn never_shows(&self, secret: &str) {
        assert!(!self.all().contains(secret), "the secret {secret:?} appears in the output:\n{}", self.all());
    }
}

/// Runs `citystream args` without inherited `CITYSTREAM_*` variables, plus `env`.
fn citystream(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let b = common::run_bounded(args, env, LIMIT);
    Outcome { ok: b.code == Some(0), stdout: b.stdout, stderr: b.stderr, elapsed: b.elapsed }
}

/// Runs a helper command and asserts it succeeded.
fn sh(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn services_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh")
}

/// A Kafka broker with a SASL_SSL listener, stopped (and its data removed) when dropped.
struct SaslBroker {
    dir: tempfile::TempDir,
    offset: u16,
    user: String,
    password: String,
}

impl SaslBroker {
    /// Makes a CA, the broker's certificate (for 127.0.0.1) and PKCS12 keystore, and a SCRAM
    /// user, then starts the broker on a free port offset.
    fn start() -> SaslBroker {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let days = ["-days", "2"];
        sh(
            "openssl",
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", days[0], days[1], "-subj", "/CN=citystream test CA"],
            d,
        );
        sh("openssl", &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1"], d);
        std::fs::write(d.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "broker.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "broker.pem",
                days[0],
                days[1],
                "-extfile",
                "san.cnf",
            ],
            d,
        );
        let store_password = common::unique("store");
        std::fs::write(d.join("keystore.password"), format!("{store_password}\n")).unwrap();
        sh(
            "openssl",
            &[
                "pkcs12",
                "-export",
                "-in",
                "broker.pem",
                "-inkey",
                "broker.key",
                "-certfile",
                "ca.pem",
                "-name",
                "broker",
                "-out",
                "keystore.p12",
                "-passout",
                &format!("pass:{store_password}"),
            ],
            d,
        );
        let user = "citystream-app".to_owned();
        let password = common::unique("scram-pw");
        std::fs::write(d.join("scram.username"), format!("{user}\n")).unwrap();
        std::fs::write(d.join("scram.password"), format!("{password}\n")).unwrap();
        let broker = SaslBroker { offset: free_offset(), dir, user, password };
        let out = broker.services("up").output().unwrap();
        assert!(out.status.success(), "the SASL_SSL broker did not start:\n{}", String::from_utf8_lossy(&out.stderr));
        broker
    }

    fn services(&self, command: &str) -> Command {
        let mut c = Command::new("bash");
        c.args([services_script(), command, "kafka"])
            .env("CITYSTREAM_PORT_OFFSET", self.offset.to_string())
            .env("CITYSTREAM_STATE", self.dir.path().join("state"))
            .env("CITYSTREAM_KAFKA_SASL_SSL_DIR", self.dir.path())
            .env("CITYSTREAM_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
            .stdin(Stdio::null());
        c
    }

    /// The SASL_SSL listener.
    fn sasl_ssl(&self) -> String {
        format!("127.0.0.1:{}", 9094 + self.offset)
    }

    /// The PLAINTEXT listener of the same broker (for the independent lake check).
    fn plaintext(&self) -> String {
        format!("127.0.0.1:{}", 9092 + self.offset)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for SaslBroker {
    fn drop(&mut self) {
        match self.services("down").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("warning: stopping the SASL_SSL broker failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("warning: cannot stop the SASL_SSL broker: {e}"),
        }
    }
}

/// A port offset whose three Kafka ports (9092..=9094 + offset) are free.
fn free_offset() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let seed = (std::process::id() as u64 ^ nanos) % 500;
    (0..500u64)
        .map(|i| 3000 + 20 * ((seed + i) % 500) as u16)
        .find(|o| (9092..=9094).all(|p| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok()))
        .expect("no free port offset for the SASL_SSL broker")
}

/// The records `citystream simulate` reports as delivered.
fn simulated(stdout: &str) -> u64 {
    stdout.lines().find_map(|l| l.strip_prefix("simulated ")?.split_whitespace().next()?.parse().ok()).unwrap_or_else(|| panic!("no count in:\n{stdout}"))
}

/// The independent exactly-once check (pyarrow + confluent-kafka over the broker's PLAINTEXT
/// listener: same topics, no credentials needed for reading them back).
fn lake_check(output: &str, brokers: &str, prefix: &str, expect: u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/lake_check.py");
    let out = Command::new(common::python())
        .args([script, "--output", output, "--brokers", brokers, "--prefix", prefix, "--expect-records", &expect.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "lake check failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kafka_over_tls_with_scram_end_to_end() {
    let broker = SaslBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let sasl = broker.sasl_ssl();
    let ca = broker.ca().display().to_string();
    let prefix = format!("{}.", common::unique("sasl"));

    // simulate, configured through the environment only: SCRAM-SHA-256, the protocol implied
    // by the user, the CA only through the passthrough (so the producer and the admin client
    // must both get it), the password from the environment.
    let options = format!("ssl.ca.location={ca};client.id=citystream-security-test");
    let o = citystream(
        &["simulate", "--brokers", &sasl, "--topic-prefix", &prefix, "--vehicles", "3", "--partitions", "2"],
        &[
            ("CITYSTREAM_KAFKA_SASL_USERNAME", &broker.user),
            ("CITYSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("CITYSTREAM_KAFKA_OPTIONS", &options),
            ("CITYSTREAM_KAFKA_SASL_PASSWORD", &broker.password),
        ],
    );
    let produced = simulated(o.succeeds());
    assert!(produced > 0);
    o.never_shows(&broker.password);

    // run, configured by flags: SCRAM-SHA-512 (the default), the CA only through the passthrough
    // (so every consumer the run creates must get it), the password from a file named in the
    // environment.
    let pw_file = dir.path().join("kafka-password");
    std::fs::write(&pw_file, format!("{}\n", broker.password)).unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let run_args = |output: &str| -> Vec<String> {
        [
            "run",
            "--brokers",
            &sasl,
            "--topic-prefix",
            &prefix,
            "--group",
            &prefix,
            "--until-caught-up",
            "--output",
            output,
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-username",
            &broker.user,
            "--kafka-option",
            &format!("ssl.ca.location={ca}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = run_args(&lake);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pw_file_s = pw_file.display().to_string();
    let o = citystream(&args, &[("CITYSTREAM_KAFKA_SASL_PASSWORD_FILE", &pw_file_s), ("RUST_LOG", "debug")]);
    let stdout = o.succeeds();
    assert!(stdout.contains(&format!("records committed: {produced}")), "{stdout}");
    o.never_shows(&broker.password);
    lake_check(&lake, &broker.plaintext(), &prefix, produced);

    // A wrong password fails fast (after a good TLS handshake: the CA flags work), says the
    // credentials were refused, and never shows the
    // password — not even with librdkafka's security debugging and debug logs on.
    let wrong = format!("wrong-pw-MARK-{}", common::unique("w"));
    let lake2 = dir.path().join("lake2").display().to_string();
    let mut args = run_args(&lake2);
    args.extend(["--kafka-option".into(), "debug=security,broker,protocol".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = citystream(&args, &[("CITYSTREAM_KAFKA_SASL_PASSWORD", &wrong), ("RUST_LOG", "debug")]);
    o.fails_naming(&[&sasl, "refused the credentials", "CITYSTREAM_KAFKA_SASL_PASSWORD"]);
    o.never_shows(&wrong);
    let o = citystream(
        &["simulate", "--brokers", &sasl, "--topic-prefix", &prefix, "--events", "10", "--kafka-sasl-username", &broker.user, "--kafka-ca", &ca],
        &[("CITYSTREAM_KAFKA_SASL_PASSWORD", &wrong)],
    );
    o.fails_naming(&[&sasl, "refused the credentials"]);
    o.never_shows(&wrong);

    // Without the CA the broker's certificate is not trusted.
    let o = citystream(
        &["run", "--brokers", &sasl, "--topic-prefix", &prefix, "--until-caught-up", "--output", &lake2, "--kafka-sasl-username", &broker.user],
        &[("CITYSTREAM_KAFKA_SASL_PASSWORD", &broker.password)],
    );
    o.fails_naming(&[&sasl, "TLS", "--kafka-ca"]);
    o.never_shows(&broker.password);

    // Plaintext against the SASL_SSL listener: no answer, reported within --connect-timeout.
    let o = citystream(&["run", "--brokers", &sasl, "--topic-prefix", &prefix, "--until-caught-up", "--output", &lake2, "--connect-timeout", "3s"], &[]);
    o.fails_naming(&[&sasl]);
    assert!(common::manifests(Path::new(&lake2)).is_empty(), "failed runs committed nothing");
}

#[test]
fn s3_prefix_the_credentials_may_not_write() {
    let (Ok(key), Ok(secret)) = (std::env::var("CITYSTREAM_S3_READONLY_ACCESS_KEY_ID"), std::env::var("CITYSTREAM_S3_READONLY_SECRET_ACCESS_KEY")) else {
        panic!("CITYSTREAM_S3_READONLY_* is not set: run through scripts/with-services.sh (services.sh env sets it)");
    };
    let output = format!("s3://{}/{}", common::bucket(), common::unique("readonly"));
    let o = citystream(&["run", "--output", &output], &[("AWS_ACCESS_KEY_ID", &key), ("AWS_SECRET_ACCESS_KEY", &secret)]);
    assert!(
        !o.stderr.contains("InvalidAccessKeyId"),
        "the S3 test server does not know the read-only identity: it was started with an older scripts/services.sh; restart it (services.sh down s3, then up s3)"
    );
    o.fails_naming(&[&output, "permission denied", "may not write"]);
    o.never_shows(&secret);
}

#[test]
fn secrets_never_appear_in_output() {
    let mark = format!("secret-MARK-{}", common::unique("s"));
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let unreachable = format!("127.0.0.1:{}", common::free_port());

    // A bad S3 secret key, with debug logs on.
    let output = format!("s3://{}/{}", common::bucket(), common::unique("leak"));
    let o = citystream(&["run", "--output", &output], &[("AWS_SECRET_ACCESS_KEY", &mark), ("RUST_LOG", "trace")]);
    o.fails_naming(&["credentials"]);
    o.never_shows(&mark);

    // Secret passthrough settings (from the environment and from a flag), a SASL password,
    // debug logs on, and a broker that does not answer.
    let o = citystream(
        &[
            "run",
            "--brokers",
            &unreachable,
            "--output",
            &lake,
            "--connect-timeout",
            "2s",
            "--kafka-sasl-username",
            "u",
            "--kafka-option",
            &format!("ssl.key.password={mark}"),
        ],
        &[("CITYSTREAM_KAFKA_SASL_PASSWORD", &mark), ("CITYSTREAM_KAFKA_OPTIONS", &format!("sasl.oauthbearer.client.secret={mark}")), ("RUST_LOG", "debug")],
    );
    o.fails_naming(&[&unreachable]);
    o.never_shows(&mark);
    // A passthrough value librdkafka refuses is not echoed either.
    let o = citystream(&["run", "--brokers", &unreachable, "--output", &lake, "--kafka-option", &format!("security.protocol={mark}")], &[]);
    o.fails_naming(&["--kafka-option", "security.protocol"]);
    o.never_shows(&mark);
    // Nor is a malformed entry of CITYSTREAM_KAFKA_OPTIONS.
    let o = citystream(&["run", "--brokers", &unreachable, "--output", &lake], &[("CITYSTREAM_KAFKA_OPTIONS", &mark)]);
    o.fails_naming(&["--kafka-option"]);
    o.never_shows(&mark);

    // --help shows no secret from the environment, and S3 credentials have no flags at all:
    // they come from the environment or the platform only.
    for command in ["run", "simulate"] {
        let o = citystream(&[command, "--help"], &[("CITYSTREAM_KAFKA_SASL_PASSWORD", &mark), ("CITYSTREAM_KAFKA_OPTIONS", &format!("sasl.password={mark}"))]);
        let help = o.succeeds();
        o.never_shows(&mark);
        assert!(help.contains("--kafka-sasl-username") && help.contains("CITYSTREAM_KAFKA_SASL_PASSWORD"), "{help}");
        assert!(!help.contains("--kafka-sasl-password") && !help.to_lowercase().contains("--aws"), "{help}");
    }
}
