#!/usr/bin/env python3
"""The deployment rehearsal: a StatefulSet and the compose cluster, for real, without an engine.

This program plays the kubelet (and compose). It makes one network namespace per pod or service
(`ip netns add`, a veth pair each into a bridge that lives in a namespace of its own, so nothing
is configured in the machine's own network namespace), gives each an /etc/netns/<name>/hosts
that resolves the headless Service's per-pod DNS names and the `kafka` / `s3` service names, runs
Kafka and SeaweedFS from scripts/services.sh inside the namespaces `kafka` and `s3`, and runs the
real workers/entrypoint.sh, unchanged, in each pod's namespace with the environment the rendered
manifest (or the loaded compose project) gives it: env, envFrom ConfigMap/Secret, the downward
API, $(VAR) references, the pod's hostname, a private /tmp (the emptyDir) and the
securityContext's user with no-new-privileges. The image's ENV lines (workers/Dockerfile) come
first, as in the container.

Scenarios (StatefulSet, then compose), each ending in a check by the independent lake checker
(tests/python/lake_check.py: every (topic, partition, offset) in Kafka exactly once in the lake):
  forms    2 pods form the cluster through the DNS names and commit; all pods get SIGTERM (as
           on delete) and exit 0 within terminationGracePeriodSeconds, having committed again;
  kill     with records arriving, one pod is SIGKILLed; the kubelet restarts every container
           that exits (the survivor exits non-zero by itself); the cluster commits again; SIGTERM;
  rollout  the overlay with replicas 3 renders a new pod template (CITYSTREAM_PROCESSES=3); all
           old pods are replaced at once (maxUnavailable 100%) and the 3-process cluster resumes;
  compose  worker-0 / worker-1 and simulate run with the compose file's command and environment.
After each SIGTERM a drain (the same pods with `--until-caught-up`, as a one-off Job of the same
template) reads the rest, so that the check can require every record.

Usage: rehearsal.py --bin CITYSTREAM --manifest-2 FILE --manifest-3 FILE --compose-json FILE
                    --work DIR [--python PY]
Prints one JSON summary line on stdout (last line); exits 1 with the reason on failure. Every
namespace and process it made is removed at the end, whatever happened. Needs root and `ip netns`.
"""
import argparse
import base64
import fcntl
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRYPOINT = os.path.join(REPO, "workers", "entrypoint.sh")
DOCKERFILE = os.path.join(REPO, "workers", "Dockerfile")
SERVICES = os.path.join(REPO, "scripts", "services.sh")
LAKE_CHECK = os.path.join(REPO, "tests", "python", "lake_check.py")
MARKS = "/run/citystream-rehearsal"  # a file <MARKS>/<ns> marks a namespace as made here
LOCK = "/run/citystream-rehearsal.lock"
HUB = "citystream-hub"
NET = "10.213.0"  # only inside the namespaces made here; the machine's own namespace never sees it
K8S_NS = "citystream"  # the Kubernetes namespace of the rehearsal overlay
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_BIN = None  # set in main(): <work>/image-bin, holding a link to the binary under test
S3_KEYS = {"AWS_ACCESS_KEY_ID": "citystream", "AWS_SECRET_ACCESS_KEY": "citystream-secret"}  # services.sh's test identity
T0 = time.monotonic()
LOG_SERIAL = itertools.count()


def log(msg):
    print(f"rehearsal [{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def run(cmd, check=True, **kw):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise Failure(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


# --------------------------------------------------------------------------------- network ----
class Network:
    """Namespaces on one bridge (in the hub namespace); hosts files per namespace."""

    def __init__(self):
        self.addr = {}  # namespace -> address
        self.made = []

    @staticmethod
    def ours():
        out = run(["ip", "netns", "list"]).stdout
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if os.path.exists(os.path.join(MARKS, n))]

    @staticmethod
    def remove(ns):
        """Kill whatever runs in the namespace, then delete it and its /etc/netns folder."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [int(p) for p in run(["ip", "netns", "pids", ns], check=False).stdout.split()]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (20 if sig == signal.SIGTERM else 5)
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            if not pids:
                break
        run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        try:
            os.unlink(os.path.join(MARKS, ns))
        except FileNotFoundError:
            pass

    def sweep(self):
        """Remove namespaces an earlier run left (killed before its clean-up)."""
        for ns in self.ours():
            log(f"removing namespace {ns} left by an earlier rehearsal")
            self.remove(ns)

    def _mark(self, ns):
        os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
        os.makedirs(MARKS, exist_ok=True)
        with open(os.path.join(MARKS, ns), "w") as f:
            f.write(f"made by tests/deploy/rehearsal.py, pid {os.getpid()}\n")
        # No DNS server in the namespaces: names come from the hosts file, others fail at once.
        with open(f"/etc/netns/{ns}/resolv.conf", "w") as f:
            f.write("# deployment rehearsal: no DNS server; names come from /etc/hosts\noptions timeout:1 attempts:1\n")

    def hub(self):
        self._mark(HUB)
        run(["ip", "netns", "add", HUB])
        self.made.append(HUB)
        run(["ip", "-n", HUB, "link", "set", "lo", "up"])
        run(["ip", "-n", HUB, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", HUB, "link", "set", "br0", "up"])

    def add(self, ns, host):
        addr = f"{NET}.{host}"
        self._mark(ns)
        run(["ip", "netns", "add", ns])
        self.made.append(ns)
        veth = f"v{host}"
        run(["ip", "-n", HUB, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", HUB, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self.addr[ns] = addr
        return addr

    def hosts(self, names):
        """Every namespace resolves `names` (name -> namespace) and its own name."""
        for ns in self.addr:
            lines = ["127.0.0.1 localhost", f"{self.addr[ns]} {ns}"]
            lines += [f"{self.addr[target]} {name}" for name, target in names.items() if target != ns or name != ns]
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write("\n".join(lines) + "\n")

    def cleanup(self):
        for ns in reversed(self.made):
            self.remove(ns)
        self.made = []


def in_ns(ns, cmd):
    return ["ip", "netns", "exec", ns] + cmd


# -------------------------------------------------------------------------------- services ----
class Services:
    """Kafka and SeaweedFS of scripts/services.sh, each in its namespace, bound to its address."""

    def __init__(self, net, work):
        self.net, self.work = net, work

    def env(self, svc):
        return {**os.environ, "CITYSTREAM_SERVICES_HOST": self.net.addr[svc], "CITYSTREAM_STATE": os.path.join(self.work, f"services-{svc}"), "CITYSTREAM_PORT_OFFSET": "0"}

    def up(self):
        procs = {svc: subprocess.Popen(in_ns(svc, ["bash", SERVICES, "up", svc]), env=self.env(svc), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for svc in ("kafka", "s3")}
        for svc, p in procs.items():
            out = p.communicate()[0]
            # SeaweedFS's S3 gateway can start before its volume server answers on a loaded
            # machine, and then fails its first round trips: start it again (twice at most).
            for attempt in range(2):
                if p.returncode == 0:
                    break
                log(f"{svc} did not come up (attempt {attempt + 1}); starting it again")
                run(in_ns(svc, ["bash", SERVICES, "down", svc]), check=False, env=self.env(svc))
                p = subprocess.Popen(in_ns(svc, ["bash", SERVICES, "up", svc]), env=self.env(svc), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                out = p.communicate()[0]
            if p.returncode != 0:
                raise Failure(f"services.sh up {svc} in namespace {svc} failed:\n{out[-3000:]}")
            log(f"{svc} up at {self.net.addr[svc]}")

    def down(self):
        for svc in ("kafka", "s3"):
            if svc in self.net.addr and os.path.isdir(os.path.join(self.work, f"services-{svc}")):
                run(in_ns(svc, ["bash", SERVICES, "down", svc]), check=False, env=self.env(svc))


# ---------------------------------------------------------------------------------- kubelet ---
def image_env():
    """ENV lines of the Dockerfile's last stage (the container's environment before the pod's)."""
    env, stage = {}, 0
    for line in open(DOCKERFILE):
        if line.startswith("FROM "):
            stage += 1
            env = {}
        m = re.match(r"ENV\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


class Template:
    """The pod template of the rendered StatefulSet, and the objects it references."""

    def __init__(self, path):
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        self.objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        sets = [d for d in docs if d["kind"] == "StatefulSet"]
        if len(sets) != 1:
            raise Failure(f"{path}: expected one StatefulSet, found {len(sets)}")
        self.sts = sets[0]
        self.name = self.sts["metadata"]["name"]
        self.namespace = self.sts["metadata"].get("namespace", "default")
        self.replicas = self.sts["spec"]["replicas"]
        spec = self.sts["spec"]["template"]["spec"]
        self.grace = spec.get("terminationGracePeriodSeconds", 30)
        self.container = next(c for c in spec["containers"] if c["name"] == "citystream")
        sc = {**spec.get("securityContext", {}), **self.container.get("securityContext", {})}
        self.user = (sc.get("runAsUser"), sc.get("runAsGroup"))
        self.no_new_privs = sc.get("allowPrivilegeEscalation") is False
        self.template_json = json.dumps(self.sts["spec"]["template"], sort_keys=True)

    def _data(self, kind, name, optional):
        obj = self.objects.get((kind, name))
        if obj is None:
            if optional:
                return None
            raise Failure(f"the pod references {kind} {name}, which the manifest does not hold")
        data = obj.get("data", {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        return data

    def env(self, ordinal, pod_ip):
        """The container's environment, resolved as the kubelet does."""
        pod = f"{self.name}-{ordinal}"
        env = dict(image_env())
        for src in self.container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in src:
                    data = self._data(kind, src[key]["name"], src[key].get("optional", False))
                    env.update({src.get("prefix", "") + k: v for k, v in (data or {}).items()})
        fields = {"metadata.name": pod, "metadata.namespace": self.namespace, "status.podIP": pod_ip, "spec.serviceAccountName": self.sts["spec"]["template"]["spec"].get("serviceAccountName", "default")}
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
                continue
            vf = e.get("valueFrom", {})
            if "fieldRef" in vf:
                env[e["name"]] = fields[vf["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind, ref = ("Secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("ConfigMap", vf["configMapKeyRef"])
                data = self._data(kind, ref["name"], ref.get("optional", False))
                if data is not None and ref["key"] in data:
                    env[e["name"]] = data[ref["key"]]
                elif not ref.get("optional", False):
                    raise Failure(f"{kind} {ref['name']} has no key {ref['key']}")
            else:
                raise Failure(f"env {e['name']}: valueFrom {list(vf)} is not emulated by the rehearsal")
        return env

    def probe(self, kind):
        """(path, port) of the container's `livenessProbe`/`readinessProbe` httpGet, a named
        port resolved through the container's ports as the kubelet does."""
        get = self.container.get(kind, {}).get("httpGet")
        if get is None:
            raise Failure(f"the container has no {kind} with httpGet")
        port = get["port"]
        if isinstance(port, str):
            named = {p["name"]: p["containerPort"] for p in self.container.get("ports", []) if "name" in p}
            if port not in named:
                raise Failure(f"{kind} names port {port!r}, which the container does not declare")
            port = named[port]
        return get.get("path", "/"), int(port)

    def args(self):
        if "command" in self.container:
            raise Failure("the container sets `command`: the rehearsal expects the image's entrypoint")
        return [str(a) for a in self.container.get("args", [])]


class Pod:
    """One container of one pod (or compose service) in its namespace, restarted when it exits."""

    def __init__(self, name, ns, env, args, logs, user=(None, None), no_new_privs=False, entry=None, grace=30):
        self.name, self.ns, self.env, self.args, self.logs = name, ns, env, args, logs
        self.user, self.no_new_privs, self.entry, self.grace = user, no_new_privs, entry or [ENTRYPOINT], grace
        self.proc, self.generation, self.exits, self.deleting = None, 0, [], False
        self.log_path = None

    def command(self, extra):
        # The image has the binary in /usr/local/bin; here a folder holding only `citystream`
        # comes first on PATH instead.
        env = {"HOSTNAME": self.name, "HOME": "/", **self.env}
        env["PATH"] = f"{IMAGE_BIN}:{env.get('PATH', IMAGE_PATH)}"
        priv = ["setpriv"]
        if self.user[0] is not None:
            priv += [f"--reuid={self.user[0]}", f"--regid={self.user[1] if self.user[1] is not None else self.user[0]}", "--clear-groups"]
        if self.no_new_privs:
            priv += ["--no-new-privs"]
        # A private mount namespace with a tmpfs on /tmp (the pod's emptyDir) and the pod's
        # hostname (its own UTS namespace); then the container's user and environment only.
        script = 'mount -t tmpfs -o size=1m,mode=1777 tmpfs /tmp && hostname "$0" && exec "$@"'
        return in_ns(self.ns, ["unshare", "--mount", "--uts", "--", "sh", "-c", script, self.name] + priv + ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + self.entry + self.args + extra)

    def start(self, extra=(), tag="run"):
        self.log_path = os.path.join(self.logs, f"{next(LOG_SERIAL):03d}-{self.name}.{tag}{self.generation}.log")
        out = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(list(extra)), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.generation += 1

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def output(self):
        try:
            return open(self.log_path).read()
        except (OSError, TypeError):
            return ""

    def rss_peak_kib(self):
        """VmHWM of the citystream process (the entrypoint exec'd it: same pid)."""
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)


class Kubelet:
    """Keeps the pods running (restartPolicy: Always) until they are deleted."""

    def __init__(self, pods, backoff=1.0):
        self.pods, self.backoff, self.restarts = pods, backoff, 0

    def tick(self):
        for p in self.pods:
            if p.proc is not None and not p.deleting and p.proc.poll() is not None:
                p.exits.append(p.proc.returncode)
                log(f"{p.name} exited {p.proc.returncode}; restarting (restartPolicy Always)")
                time.sleep(self.backoff)
                p.start()
                self.restarts += 1

    def wait(self, what, pred, limit=300):
        deadline = time.monotonic() + limit
        while not pred():
            if time.monotonic() > deadline:
                raise Failure(f"timed out after {limit} s waiting for {what}; logs:\n" + "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.pods))
            self.tick()
            time.sleep(0.2)

    def delete(self):
        """SIGTERM to every pod at once; each must exit 0 within its grace period (else SIGKILL
        and a failure). Returns the longest shutdown in seconds."""
        for p in self.pods:
            p.deleting = True
        start = time.monotonic()
        for p in self.pods:
            p.signal(signal.SIGTERM)
        longest = 0.0
        for p in self.pods:
            try:
                code = p.proc.wait(timeout=max(0.0, p.grace - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                p.signal(signal.SIGKILL)
                p.proc.wait()
                raise Failure(f"{p.name} did not stop within terminationGracePeriodSeconds={p.grace}:\n{p.output()[-3000:]}")
            longest = max(longest, time.monotonic() - start)
            if code != 0:
                raise Failure(f"{p.name} exited {code} after SIGTERM (a clean shutdown exits 0):\n{p.output()[-3000:]}")
        return longest


def http_get(ns, host, port, path):
    """GET from inside the pod's namespace, to the pod's own address, as the kubelet's prober
    does: (status, body)."""
    r = subprocess.run(in_ns(ns, ["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", f"http://{host}:{port}{path}"]), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    body, _, code = r.stdout.rpartition("\n")
    return int(code) if code.isdigit() else 0, body


def probe_pods(template, pods, net):
    """The manifest's liveness and readiness probes against every running pod, and a scrape of
    /metrics on the same port: all must answer 200, and the scrape must show a committed epoch."""
    seen = {}
    for kind in ("livenessProbe", "readinessProbe"):
        path, port = template.probe(kind)
        for p in pods:
            code, body = http_get(p.ns, net.addr[p.name], port, path)
            if code != 200:
                raise Failure(f"{p.name}: {kind} GET {path} on port {port} answered {code}: {body[:500]}\n{p.output()[-2000:]}")
            seen[f"{kind}:{path}"] = code
    for i, p in enumerate(pods):
        code, body = http_get(p.ns, net.addr[p.name], port, "/metrics")
        m = re.search(r"^citystream_last_committed_epoch (-?\d+)", body, re.M)
        if code != 200 or m is None:
            raise Failure(f"{p.name}: /metrics on port {port} answered {code} without citystream_last_committed_epoch:\n{body[:1000]}")
        # Process 0 runs the committer: it has seen the commit the rehearsal waited for.
        if i == 0 and int(m.group(1)) < 0:
            raise Failure(f"{p.name}: /metrics shows no committed epoch after a commit:\n{body[:1000]}")
        seen[f"{p.name}:last_committed_epoch"] = int(m.group(1))
    return seen


def commits(pods):
    return sum(p.output().count("manifest committed") for p in pods)


def drain(pods, limit=300):
    """The same pods, once, with --until-caught-up: they read the rest, commit it and exit 0."""
    for p in pods:
        p.deleting = True
        p.start(extra=["--until-caught-up"], tag="drain")
    deadline = time.monotonic() + limit
    for p in pods:
        try:
            code = p.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.signal(signal.SIGKILL)
            raise Failure(f"drain: {p.name} did not finish within {limit} s:\n{p.output()[-3000:]}")
        if code != 0:
            raise Failure(f"drain: {p.name} exited {code}:\n{p.output()[-3000:]}")


class Checker:
    def __init__(self, python, net):
        self.python, self.net = python, net

    def check(self, output, prefix, group, expect=None):
        env = {"PATH": os.environ.get("PATH", IMAGE_PATH), **S3_KEYS, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://s3:8333", "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}
        cmd = [self.python, LAKE_CHECK, "--output", output, "--brokers", "kafka:9092", "--prefix", prefix, "--expect-group", group]
        if expect is not None:
            cmd += ["--expect-records", str(expect)]
        r = subprocess.run(in_ns("lake-check", cmd), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"lake check of {output} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        if summary["data_rows"] + summary["late_rows"] + summary["dead_letters"] != summary["kafka_records"]:
            raise Failure(f"lake check: rows do not add up to the Kafka records: {summary}")
        return summary


# ------------------------------------------------------------------------------- scenarios ---
def produce(binary, prefix, records, start, seed, rate=0):
    """The simulator in the namespace `simulate`, against kafka:9092."""
    cmd = [binary, "simulate", "--brokers", "kafka:9092", "--topic-prefix", prefix, "--vehicles", "20", "--events", str(records), "--partitions", "4",
           "--late-fraction", "0.01", "--malformed-fraction", "0.005", "--seed", str(seed), "--start", start, "--rate", str(rate)]
    return subprocess.Popen(in_ns("simulate", cmd), env={"PATH": IMAGE_PATH, "RUST_LOG": "warn"}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, what):
    out = proc.communicate(timeout=300)[0]
    if proc.returncode != 0:
        raise Failure(f"{what} failed:\n{out[-3000:]}")


def statefulset(args, net, checker, logs, rng):
    two, three = Template(args.manifest_2), Template(args.manifest_3)
    if (two.replicas, three.replicas) != (2, 3):
        raise Failure(f"the overlays render replicas {two.replicas} and {three.replicas}, expected 2 and 3")
    if two.template_json == three.template_json:
        raise Failure("changing replicas did not change the pod template: the rollout would keep pods of the old size")
    output = two.env(0, "")["CITYSTREAM_OUTPUT"]
    prefix = two.env(0, "")["CITYSTREAM_TOPIC_PREFIX"]
    group = two.env(0, "")["CITYSTREAM_GROUP"]
    results, produced = [], 0
    rss = []

    def pods_of(t):
        out = []
        for i in range(t.replicas):
            name = f"{t.name}-{i}"
            env = t.env(i, net.addr[name])
            out.append(Pod(name, name, env, t.args(), logs, user=args.user or t.user, no_new_privs=t.no_new_privs, grace=t.grace))
        return out

    def sample_rss(pods):
        rss.extend(k for k in (p.rss_peak_kib() for p in pods) if k)

    # forms: the cluster forms through the headless DNS names and commits; SIGTERM on delete.
    finish(produce(args.bin, prefix, 20_000, "2025-03-01T08:00:00", 101), "simulate (forms)")
    produced += 20_000
    pods = pods_of(two)
    env0 = pods[0].env
    for p in pods:
        p.start()
    kubelet = Kubelet(pods)
    kubelet.wait("the first commit of the 2-pod cluster", lambda: commits(pods) >= 1)
    peers = re.search(r"peers: (.*)", pods[1].output())
    sample_rss(pods)
    probes = probe_pods(two, pods, net)
    log(f"probes: {probes}")
    before = commits(pods)
    grace_forms = kubelet.delete()
    if commits(pods) <= before or not all("signal received: finishing" in p.output() for p in pods):
        raise Failure("SIGTERM: the pods exited without sealing and committing what they read:\n" + pods[0].output()[-3000:])
    drain(pods)
    check = checker.check(output, prefix, group, produced)
    results.append({"scenario": "forms", "pods": 2, "peers": peers.group(1) if peers else None, "probes": probes, "sigterm_exit_seconds": round(grace_forms, 2), "records_checked": check["kafka_records"], **{k: check[k] for k in ("data_rows", "late_rows", "dead_letters", "files", "manifests")}})
    log(f"forms: {results[-1]}")

    # kill: SIGKILL one pod while records arrive; the kubelet restarts what exits; it recovers.
    live = produce(args.bin, prefix, 30_000, "2025-03-01T12:00:00", 102, rate=3_000)
    produced += 30_000
    pods = pods_of(two)
    for p in pods:
        p.start()
    kubelet = Kubelet(pods)
    kubelet.wait("a commit before the kill", lambda: commits(pods) >= 1)
    victim = pods[rng.randrange(2)]
    victim.signal(signal.SIGKILL)
    log(f"SIGKILL {victim.name}")
    generations = [p.generation for p in pods]
    kubelet.wait("the killed pod restarted", lambda: victim.generation > generations[pods.index(victim)])
    survivor = pods[1 - pods.index(victim)]
    kubelet.wait("the survivor to stop (it cannot go on without its peer) and be restarted", lambda: survivor.generation > generations[pods.index(survivor)], limit=120)
    kubelet.wait("a commit of the restarted cluster", lambda: commits(pods) >= 1)
    sample_rss(pods)
    finish(live, "simulate (kill)")
    grace_kill = kubelet.delete()
    drain(pods)
    check = checker.check(output, prefix, group, produced)
    results.append({"scenario": "kill", "victim": victim.name, "victim_exit": victim.exits[:1], "survivor_exit": survivor.exits[:1], "restarts": kubelet.restarts, "sigterm_exit_seconds": round(grace_kill, 2), "records_checked": check["kafka_records"], **{k: check[k] for k in ("data_rows", "late_rows", "dead_letters", "files", "manifests")}})
    if survivor.exits[:1] == [0]:
        raise Failure(f"the survivor of the kill exited 0: {survivor.output()[-2000:]}")
    log(f"kill: {results[-1]}")

    # rollout 2 -> 3: a new template; every pod is replaced at once with the new -n. Records
    # arrive before and after the replacement, so that the new cluster has new epochs to commit.
    finish(produce(args.bin, prefix, 10_000, "2025-03-01T16:00:00", 103), "simulate (rollout, before)")
    produced += 10_000
    old = pods_of(two)
    for p in old:
        p.start()
    kubelet = Kubelet(old)
    kubelet.wait("a commit of the old (2-pod) cluster", lambda: commits(old) >= 1)
    grace_old = kubelet.delete()
    new = pods_of(three)
    if new[2].env.get("CITYSTREAM_PROCESSES") != "3":
        raise Failure(f"the new template's CITYSTREAM_PROCESSES is {new[2].env.get('CITYSTREAM_PROCESSES')}, expected 3")
    for p in new:
        p.start()
    finish(produce(args.bin, prefix, 10_000, "2025-03-01T18:00:00", 104), "simulate (rollout, after)")
    produced += 10_000
    kubelet = Kubelet(new)
    kubelet.wait("a commit of the new (3-pod) cluster", lambda: commits(new) >= 1)
    peers3 = re.search(r"peers: (.*)", new[2].output())
    sample_rss(new)
    grace_new = kubelet.delete()
    drain(new)
    check = checker.check(output, prefix, group, produced)
    results.append({"scenario": "rollout", "pods_before": 2, "pods_after": 3, "peers": peers3.group(1) if peers3 else None, "sigterm_exit_seconds": round(max(grace_old, grace_new), 2), "records_checked": check["kafka_records"], **{k: check[k] for k in ("data_rows", "late_rows", "dead_letters", "files", "manifests")}})
    log(f"rollout: {results[-1]}")
    redacted = {k: ("<redacted>" if any(w in k for w in ("SECRET", "PASSWORD", "KEY")) else v) for k, v in env0.items()}
    return {"grace_period_seconds": two.grace, "pod_env": redacted, "peak_rss_mib": round(max(rss) / 1024, 1) if rss else None, "scenarios": results}


def compose(args, net, checker, logs):
    project = json.load(open(args.compose_json))
    services = project["services"]

    def pod_of(name):
        s = services[name]
        env = {**image_env(), **{k: v for k, v in (s.get("environment") or {}).items() if v is not None}}
        user = tuple(int(x) for x in s["user"].split(":")) if s.get("user") else (None, None)
        entry = list(s["entrypoint"]) if s.get("entrypoint") else [ENTRYPOINT]
        no_new_privs = "no-new-privileges:true" in (s.get("security_opt") or [])
        grace = parse_go_duration(s.get("stop_grace_period", "10s"))
        return Pod(s.get("hostname") or name, name, env, [str(a) for a in s.get("command") or []], logs, user=args.user or user, no_new_privs=no_new_privs, entry=entry, grace=grace)

    workers = [pod_of("worker-0"), pod_of("worker-1")]
    sim = pod_of("simulate")
    output, prefix, group = workers[0].env["CITYSTREAM_OUTPUT"], workers[0].env.get("CITYSTREAM_TOPIC_PREFIX", ""), workers[0].env.get("CITYSTREAM_GROUP", "citystream")
    sim.start()
    for p in workers:
        p.start()
    kubelet = Kubelet(workers)
    kubelet.wait("a commit of the compose cluster", lambda: commits(workers) >= 1 or not sim.alive(), limit=300)
    if not sim.alive():
        raise Failure(f"the compose simulate service stopped: {sim.output()[-3000:]}")
    sim.signal(signal.SIGTERM)
    sim.proc.wait(timeout=60)
    before = commits(workers)
    took = kubelet.delete()
    if commits(workers) <= before:
        raise Failure("compose workers: SIGTERM did not commit what was read")
    drain(workers)
    check = checker.check(output, prefix, group)
    if check["kafka_records"] == 0:
        raise Failure("the compose simulate service produced nothing")
    return {"scenario": "compose", "services": ["kafka", "s3", "simulate", "worker-0", "worker-1"], "stop_grace_period_seconds": workers[0].grace, "sigterm_exit_seconds": round(took, 2), "simulate_exit_on_sigterm": sim.proc.returncode,
            "records_checked": check["kafka_records"], **{k: check[k] for k in ("data_rows", "late_rows", "dead_letters", "files", "manifests")}}


def parse_go_duration(s):
    total, unit = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for num, u in re.findall(r"([0-9.]+)(ms|h|m|s)", str(s)):
        total += float(num) * unit[u]
    return int(total)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--manifest-2", required=True)
    ap.add_argument("--manifest-3", required=True)
    ap.add_argument("--compose-json", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 1_000_003)
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    # Each pod mounts its own tmpfs on /tmp (the emptyDir): a checkout or a binary under /tmp is
    # hidden from the pods, which would exit 127 until the rehearsal timed out.
    hidden = [p for p in (ENTRYPOINT, args.bin) if os.path.realpath(p).startswith("/tmp/")]
    if hidden:
        error = f"{hidden[0]} lies under /tmp, which every pod's emptyDir (a tmpfs on /tmp) hides: clone the repository, and build, outside /tmp"
        log(f"FAILED: {error}")
        print(json.dumps({"ok": False, "error": error}))
        return 1
    global IMAGE_BIN
    # Beside the binary, not under the work folder: that may be under /tmp, which each pod's
    # emptyDir (a tmpfs on /tmp) hides.
    IMAGE_BIN = os.path.join(os.path.dirname(args.bin), "rehearsal-image-bin")
    os.makedirs(IMAGE_BIN, exist_ok=True)
    link = os.path.join(IMAGE_BIN, "citystream")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(args.bin, link)
    rng = random.Random(args.seed)
    log(f"seed {args.seed}")
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)

    # The namespaced processes run as the manifest's user; they must be able to run the binary
    # and the entrypoint from where this checkout is (a checkout under a private home directory
    # cannot be: then they run as root, and the summary says so).
    args.user = None
    probe = run(["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", "sh", "-c", f'test -x "{args.bin}" && test -r "{ENTRYPOINT}"'], check=False)
    run_as = "manifest user"
    if probe.returncode != 0:
        args.user = (0, 0)
        run_as = "root (the checkout is not readable by uid 10001)"
        log(f"warning: running the pods as {run_as}")

    def stop(signum, _frame):
        raise Failure(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # clean up the namespaces when stopped
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one rehearsal per machine at a time (fixed namespace names)
    net = Network()
    services = Services(net, args.work)
    summary = {"seed": args.seed, "run_as": run_as}
    try:
        net.sweep()
        net.hub()
        net.add("kafka", 2)
        net.add("s3", 3)
        net.add("simulate", 4)
        net.add("lake-check", 5)
        for i in range(3):
            net.add(f"citystream-{i}", 10 + i)
        net.add("worker-0", 20)
        net.add("worker-1", 21)
        names = {"kafka": "kafka", "s3": "s3", "worker-0": "worker-0", "worker-1": "worker-1", "simulate": "simulate"}
        for i in range(3):
            names[f"citystream-{i}.citystream.{K8S_NS}.svc.cluster.local"] = f"citystream-{i}"
        net.hosts(names)
        summary["namespaces"] = sorted(net.addr)
        services.up()
        checker = Checker(args.python, net)
        summary["statefulset"] = statefulset(args, net, checker, logs, rng)
        summary["compose"] = compose(args, net, checker, logs)
        summary["seconds"] = round(time.monotonic() - T0, 1)
    except Failure as e:
        log(f"FAILED: {e}")
        print(json.dumps({"ok": False, "error": str(e)[:20000], **summary}))
        return 1
    finally:
        services.down()
        net.cleanup()
        left = Network.ours()
        if left:
            log(f"namespaces left behind: {left}")
            summary["left_behind"] = left
    summary["ok"] = not summary.get("left_behind")
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
