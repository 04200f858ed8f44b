//! The deployment kit, checked with the tools its users' tools are built on: the image's
//! Dockerfile with hadolint, docker-compose.yaml with compose-go (the loader of `docker
//! compose`), the k8s/ kustomize base rendered with kustomize and validated by
//! kubernetes-validate in strict mode, and a rehearsal that plays the kubelet: the rendered
//! StatefulSet's pods and the compose file's workers, each in a network namespace of its own,
//! running workers/entrypoint.sh unchanged against Kafka and S3 of scripts/services.sh, every
//! scenario checked by the independent lake checker (tests/python/lake_check.py).
//!
//! The validators are installed on first use by scripts/deploy-tools.sh (Go module proxy, PyPI;
//! cached). The rehearsal needs root and `ip netns`; where a machine has neither, set
//! `CITYSTREAM_DEPLOY_REHEARSAL=skip` to skip it with a message — without that marker its
//! absence fails the test (our machines and CI have both).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Paths of the validators (scripts/deploy-tools.sh's KEY=VALUE lines), installed once.
fn tools() -> &'static BTreeMap<String, String> {
    static TOOLS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let out = Command::new("bash")
            .arg(format!("{REPO}/scripts/deploy-tools.sh"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/deploy-tools.sh");
        assert!(out.status.success(), "scripts/deploy-tools.sh failed (see its messages above)");
        String::from_utf8(out.stdout).unwrap().lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    })
}

fn tool(name: &str) -> String {
    tools().get(name).unwrap_or_else(|| panic!("scripts/deploy-tools.sh did not report {name}")).clone()
}

/// Runs a command; returns (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `kustomize build DIR`.
fn render(dir: &str) -> String {
    let (ok, stdout, stderr) = run(Command::new(tool("kustomize")).args(["build", &format!("{REPO}/{dir}")]));
    assert!(ok, "kustomize build {dir} failed: {stderr}");
    stdout
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The documents of a rendered manifest.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    // The venv's PyYAML turns YAML into JSON (the crate has no YAML parser of its own).
    let mut child = Command::new(tool("python"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// kubernetes-validate --strict on a file; (success, output).
fn validate_strict(path: &Path) -> (bool, String) {
    let (ok, stdout, stderr) = run(Command::new(tool("kubernetes_validate")).arg("--strict").arg(path));
    (ok, format!("{stdout}{stderr}"))
}

#[test]
fn dockerfile_passes_hadolint() {
    let config = format!("{REPO}/workers/.hadolint.yaml");
    let (ok, stdout, stderr) = run(Command::new(tool("hadolint")).args(["--no-color", "--config", &config, &format!("{REPO}/workers/Dockerfile")]));
    assert!(ok, "hadolint found problems in workers/Dockerfile:\n{stdout}{stderr}");
    let (_, version, _) = run(Command::new(tool("hadolint")).arg("--version"));
    eprintln!("{}", version.trim());
    // The linter is live with this configuration: an unpinned base image and a root user fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = write_temp(dir.path(), "Dockerfile", "FROM debian\nRUN apt-get install -y curl\n");
    let (ok, stdout, _) = run(Command::new(tool("hadolint")).args(["--no-color", "--config", &config]).arg(&bad));
    assert!(!ok && stdout.contains("DL3006"), "hadolint should reject an untagged base image: {stdout}");
    // What the rehearsal cannot show about the image, read from the file.
    let text = std::fs::read_to_string(format!("{REPO}/workers/Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked"), "the image builds the locked release binary");
    assert!(text.contains("ca-certificates") && text.contains("USER 10001:10001"), "CA certificates and a numeric non-root user");
    assert!(text.contains("FROM debian:bookworm-slim"), "a small Debian runtime");
}

/// compose-go's view of docker-compose.yaml (as `docker compose config` would print it).
fn compose_project() -> serde_json::Value {
    let (ok, stdout, stderr) = run(Command::new(tool("composecheck")).arg(format!("{REPO}/docker-compose.yaml")));
    assert!(ok, "compose-go rejects docker-compose.yaml: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn compose_file_loads_with_compose_go() {
    let project = compose_project();
    let services = &project["services"];
    let names: BTreeSet<&str> = services.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["kafka", "s3", "s3-init", "simulate", "worker-0", "worker-1"]));
    // The same Kafka version as scripts/services.sh.
    let services_sh = std::fs::read_to_string(format!("{REPO}/scripts/services.sh")).unwrap();
    let version = services_sh.split("CITYSTREAM_KAFKA_VERSION:-").nth(1).and_then(|s| s.split('}').next()).unwrap();
    assert_eq!(services["kafka"]["image"], format!("apache/kafka:{version}"));
    assert_eq!(services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller", "KRaft mode");
    for (name, svc) in services.as_object().unwrap() {
        if name != "s3-init" {
            assert!(svc["healthcheck"].is_object() || name == "simulate", "{name} has a health check");
        }
    }
    assert_eq!(services["s3-init"]["depends_on"]["s3"]["condition"], "service_healthy");
    for w in ["worker-0", "worker-1"] {
        let svc = &services[w];
        assert_eq!(svc["hostname"], w, "the entrypoint takes the process index from the hostname");
        assert_eq!(svc["depends_on"]["kafka"]["condition"], "service_healthy");
        assert_eq!(svc["depends_on"]["s3"]["condition"], "service_healthy");
        assert_eq!(svc["depends_on"]["s3-init"]["condition"], "service_completed_successfully");
        assert_eq!(svc["environment"]["CITYSTREAM_PROCESSES"], "2");
        assert_eq!(svc["ports"][0]["target"], 9100, "the metrics port is published");
        assert_eq!(svc["ports"][0]["host_ip"], "127.0.0.1", "published on the loopback only");
        assert_eq!(svc["read_only"], true);
        assert_eq!(svc["stop_grace_period"], "2m0s", "SIGTERM has time to seal and commit");
    }
    assert_eq!(services["simulate"]["entrypoint"][1], "simulate");
    // The loader is strict: an unknown key is an error, as in `docker compose config`.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(format!("{REPO}/docker-compose.yaml")).unwrap();
    let bad = write_temp(dir.path(), "docker-compose.yaml", &text.replace("    hostname: worker-1\n", "    hostname: worker-1\n    restart_policy: always\n"));
    let (ok, _, stderr) = run(Command::new(tool("composecheck")).arg(&bad));
    assert!(!ok && stderr.contains("restart_policy"), "compose-go should reject an unknown key: {stderr}");
    eprintln!("compose-go {}", tool("compose_go_version"));
}

#[test]
fn kustomize_base_renders_and_validates_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let base = render("k8s");
    let path = write_temp(dir.path(), "base.yaml", &base);
    let (ok, out) = validate_strict(&path);
    assert!(ok, "kubernetes-validate --strict rejects the rendered k8s/ base:\n{out}");
    eprintln!("kustomize {}, kubernetes-validate: {}", tool("kustomize_version"), out.lines().next().unwrap_or(""));
    let docs = documents(&base);
    let kinds: Vec<String> = docs.iter().map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap())).collect();
    eprintln!("rendered: {kinds:?}");
    let kind_set: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kind_set, BTreeSet::from(["ConfigMap", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"]), "{kinds:?}");
    assert!(!base.contains("kind: Secret"), "Secrets are referenced, never part of the base");

    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let spec = &sts["spec"];
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert_eq!(spec["serviceName"], "citystream");
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let env: BTreeMap<&str, &serde_json::Value> = c["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e)).collect();
    assert_eq!(env["CITYSTREAM_PROCESSES"]["value"], spec["replicas"].to_string(), "the size is in the pod template");
    assert_eq!(spec["template"]["metadata"]["annotations"]["citystream.io/processes"], spec["replicas"].to_string());
    assert_eq!(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env["CITYSTREAM_METRICS_ADDR"]["value"], "0.0.0.0:9100");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 60);
    assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string());
    assert_eq!(spec["template"]["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    // Credentials only by reference.
    assert_eq!(env["CITYSTREAM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"], "citystream-kafka");
    assert!(c["envFrom"].as_array().unwrap().iter().any(|e| e["secretRef"]["name"] == "citystream-aws"));
    let headless = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "citystream").unwrap();
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "peers must resolve before the cluster (and so readiness) forms");
    let pdb = docs.iter().find(|d| d["kind"] == "PodDisruptionBudget").unwrap();
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], spec["selector"]["matchLabels"], "the PDB selects the pods");

    // The rehearsal overlays render and validate too; replicas 3 changes the pod template.
    for overlay in ["tests/deploy/overlays/rehearsal-2", "tests/deploy/overlays/rehearsal-3"] {
        let text = render(overlay);
        let (ok, out) = validate_strict(&write_temp(dir.path(), "overlay.yaml", &text));
        assert!(ok, "{overlay}: {out}");
    }
    let three = documents(&render("tests/deploy/overlays/rehearsal-3"));
    let sts3 = three.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(sts3["spec"]["replicas"], 3);
    let env3 = sts3["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env3.iter().any(|e| e["name"] == "CITYSTREAM_PROCESSES" && e["value"] == "3"), "{env3:?}");

    // Strict mode is live: an unknown field in the pod spec is rejected.
    let bad = base.replace("      serviceAccountName: citystream", "      serviceAccountName: citystream\n      restartPolicyX: Always");
    assert_ne!(bad, base);
    let (ok, out) = validate_strict(&write_temp(dir.path(), "bad.yaml", &bad));
    assert!(!ok, "kubernetes-validate --strict should reject an unknown field:\n{out}");
}

/// Whether this machine can make network namespaces (root and a working `ip netns`).
fn netns_available() -> Result<(), String> {
    let (ok, _, stderr) = run(Command::new("ip").args(["netns", "list"]));
    if !ok {
        return Err(format!("`ip netns list` failed: {stderr}"));
    }
    let (uid, _, _) = run(Command::new("sh").args(["-c", "test \"$(id -u)\" = 0"]));
    if !uid {
        return Err("not root".into());
    }
    Ok(())
}

#[test]
fn statefulset_and_compose_rehearsal_in_network_namespaces() {
    if let Err(why) = netns_available() {
        if std::env::var("CITYSTREAM_DEPLOY_REHEARSAL").as_deref() == Ok("skip") {
            eprintln!("SKIPPED: the deployment rehearsal needs root and `ip netns` ({why}); CITYSTREAM_DEPLOY_REHEARSAL=skip says this machine has none");
            return;
        }
        panic!(
            "the deployment rehearsal needs root and `ip netns` (iproute2): {why}. On a machine that cannot have them, set CITYSTREAM_DEPLOY_REHEARSAL=skip"
        );
    }
    let dir = tempfile::Builder::new().prefix("citystream-rehearsal").tempdir().unwrap();
    // The pods run as the manifest's user (10001): it must reach the work folder.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let two = write_temp(dir.path(), "rehearsal-2.yaml", &render("tests/deploy/overlays/rehearsal-2"));
    let three = write_temp(dir.path(), "rehearsal-3.yaml", &render("tests/deploy/overlays/rehearsal-3"));
    let compose = write_temp(dir.path(), "compose.json", &compose_project().to_string());
    let out = Command::new(tool("python"))
        .arg(format!("{REPO}/tests/deploy/rehearsal.py"))
        .args(["--bin", env!("CARGO_BIN_EXE_citystream"), "--work"])
        .arg(dir.path())
        .arg("--manifest-2")
        .arg(&two)
        .arg("--manifest-3")
        .arg(&three)
        .arg("--compose-json")
        .arg(&compose)
        .args(["--python", &tool("python")])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}")).unwrap_or_else(|_| panic!("no summary from the rehearsal:\n{stdout}"));
    assert!(out.status.success() && summary["ok"] == true, "the rehearsal failed: {}", summary["error"].as_str().unwrap_or(&stdout));
    println!("REHEARSAL {summary}");
    // Every scenario was checked against Kafka by the lake checker; the counts only grow.
    let scenarios = summary["statefulset"]["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["scenario"].as_str().unwrap()).collect();
    assert_eq!(names, ["forms", "kill", "rollout"]);
    let checked: Vec<u64> = scenarios.iter().map(|s| s["records_checked"].as_u64().unwrap()).collect();
    assert_eq!(checked, [20_000, 50_000, 70_000], "every record produced so far, exactly once");
    for s in scenarios {
        assert_eq!(
            s["data_rows"].as_u64().unwrap() + s["late_rows"].as_u64().unwrap() + s["dead_letters"].as_u64().unwrap(),
            s["records_checked"].as_u64().unwrap()
        );
        assert!(s["sigterm_exit_seconds"].as_f64().unwrap() < summary["statefulset"]["grace_period_seconds"].as_f64().unwrap());
    }
    assert!(scenarios[0]["peers"].as_str().unwrap().contains("citystream-1.citystream.citystream.svc.cluster.local:2101"));
    assert!(scenarios[2]["peers"].as_str().unwrap().contains("citystream-2.citystream.citystream.svc.cluster.local:2101"));
    assert!(summary["compose"]["records_checked"].as_u64().unwrap() > 0);
    assert!(summary.get("left_behind").is_none(), "namespaces left behind: {}", summary["left_behind"]);
}
