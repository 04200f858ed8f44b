#!/usr/bin/env python3
"""End-to-end smoke test of scripts/services.sh (Kafka + SeaweedFS S3) with real clients.

Usage:
    python3 scripts/smoke_services.py [--cold] [--state DIR] [--port-offset N] [--keep]

Runs the whole life cycle and times each step:
  up (cold or warm) -> status -> up again (must be a no-op)
  -> Kafka: create topic, produce 2 messages, consume them (confluent-kafka)
  -> S3: put/get/list an object (boto3), write + read a Parquet file (pyarrow S3FileSystem),
     query it with duckdb
  -> down -> status (stopped) -> up (warm) -> the topic, its messages and the objects are still there
  -> with-services.sh propagates a command's exit code and stops the services
  -> reset (data wiped).

The orchestration uses only the standard library, so any python3 runs it; the client checks run
in a child process with the venv's interpreter ($CITYSTREAM_PYTHON from `services.sh env`).
All clients are configured from the environment that `services.sh env` prints, nothing else, so
this also checks that `eval "$(scripts/services.sh env)"` is enough for them (pyarrow's
S3FileSystem ignores AWS_ENDPOINT_URL and gets it passed as endpoint_override).

Options:
  --state DIR  service state dir (default: a fresh temporary dir, so your <repo>/.services data is
               never touched)
  --port-offset N  CITYSTREAM_PORT_OFFSET for this run (default 100: Kafka on 9192, S3 on 8433),
               so the smoke test runs beside services already up on the default ports
  --cold       also use an empty temporary download cache and venv (no pip cache) to measure a
               first run on a fresh machine; downloads everything again (about a minute or two)
  --keep       skip the final reset and keep temporary dirs (for inspection)
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
# Run through bash, so the scripts work even where their exec bit got lost.
SERVICES = os.path.join(SCRIPTS, "services.sh")
WITH_SERVICES = os.path.join(SCRIPTS, "with-services.sh")
TOPIC = "citystream-smoke"
MESSAGES = {b"k0": b"hello", b"k1": b"world"}
OBJ_KEY = "smoke/hello.txt"
PARQUET_KEY = "smoke/table.parquet"


# ----------------------------------------------------------------------------- orchestration


def run(args: list[str], env: dict[str, str], expect: int | None = 0) -> tuple[int, float, str]:
    """Run a command, echo it, return (exit code, seconds, stdout)."""
    print(f"$ {' '.join(shlex.quote(a) for a in args)}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(["bash", *args], env=env, stdout=subprocess.PIPE, text=True)
    took = time.monotonic() - start
    if proc.stdout:
        print(proc.stdout, end="", flush=True)
    if expect is not None and proc.returncode != expect:
        raise SystemExit(f"FAILED: {args[1:]} exited {proc.returncode}, expected {expect}")
    return proc.returncode, took, proc.stdout


def client_env(base: dict[str, str]) -> dict[str, str]:
    """Apply the `export K=V` lines of `services.sh env` to a copy of base."""
    out = subprocess.run(["bash", SERVICES, "env"], env=base, check=True, stdout=subprocess.PIPE, text=True)
    env = dict(base)
    for line in out.stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["export"]:
            key, _, value = words[1].partition("=")
            env[key] = value
        elif words[:1] == ["unset"]:
            for key in words[1:]:
                env.pop(key, None)
    return env


def check(phase: str, env: dict[str, str]) -> float:
    """Run the client checks of `phase` in the venv interpreter."""
    cenv = client_env(env)
    start = time.monotonic()
    subprocess.run([cenv["CITYSTREAM_PYTHON"], os.path.abspath(__file__), "--check", phase],
                   env=cenv, check=True)
    return time.monotonic() - start


def orchestrate(opts: argparse.Namespace) -> None:
    env = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="citystream-smoke-")
    env["CITYSTREAM_STATE"] = opts.state or os.path.join(tmp, "state")
    env["CITYSTREAM_PORT_OFFSET"] = str(opts.port_offset)
    if opts.cold:
        env["CITYSTREAM_CACHE"] = os.path.join(tmp, "cache")
        env["CITYSTREAM_VENV"] = os.path.join(tmp, "venv")
        env["PIP_NO_CACHE_DIR"] = "1"
    print(f"state: {env['CITYSTREAM_STATE']}  port offset: {opts.port_offset}  cache: {env.get('CITYSTREAM_CACHE', '(default)')}"
          f"  venv: {env.get('CITYSTREAM_VENV', '(default)')}", flush=True)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        _, times["up (first)" + (" cold" if opts.cold else "")], _ = run([SERVICES, "up"], env)
        run([SERVICES, "status"], env)
        _, times["up (already running, no-op)"], _ = run([SERVICES, "up"], env)
        times["checks: write"] = check("write", env)
        _, times["down (keeps data)"], _ = run([SERVICES, "down"], env)
        run([SERVICES, "status"], env, expect=3)
        _, times["up (warm, data kept)"], _ = run([SERVICES, "up"], env)
        times["checks: persisted"] = check("persisted", env)
        _, times["down (again)"], _ = run([SERVICES, "down"], env)
        # with-services.sh: services up inside, exit code passed through, services down after.
        probe = ("import os, socket, sys; host, port = os.environ['CITYSTREAM_BROKERS'].split(':');"
                 " socket.create_connection((host, int(port)), 2);"
                 " assert os.environ['AWS_ENDPOINT_URL']; sys.exit(7)")
        _, times["with-services.sh (up + cmd + down)"], _ = run(
            [WITH_SERVICES, sys.executable, "-c", probe], env, expect=7)
        run([SERVICES, "status"], env, expect=3)
        if not opts.keep:
            run([SERVICES, "reset"], env)
            data = os.path.join(env["CITYSTREAM_STATE"], "kafka", "data")
            assert not os.path.exists(data), f"reset left {data}"
    except BaseException:
        subprocess.run(["bash", SERVICES, "down"], env=env)  # never leave servers behind
        raise
    finally:
        if not opts.keep:
            t1 = time.monotonic()
            shutil.rmtree(tmp, ignore_errors=True)
            times["cleanup of temporary dirs"] = time.monotonic() - t1
    times["total"] = time.monotonic() - t0
    print("\nTimings:")
    for name, secs in times.items():
        print(f"  {name:<38} {secs:6.1f} s")
    print("smoke_services: all checks passed")


# ----------------------------------------------------------------------------- client checks
# These run inside the venv (confluent-kafka, boto3, pyarrow, duckdb) and are configured only
# through the environment printed by `services.sh env`.


def kafka_check(phase: str) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    brokers = os.environ["CITYSTREAM_BROKERS"]
    admin = AdminClient({"bootstrap.servers": brokers})
    topics = admin.list_topics(timeout=10).topics
    if phase == "write":
        if TOPIC not in topics:
            admin.create_topics([NewTopic(TOPIC, num_partitions=6, replication_factor=1)])[TOPIC].result(20)
        producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
        for key, value in MESSAGES.items():
            producer.produce(TOPIC, key=key, value=value)
        assert producer.flush(20) == 0, "messages not delivered"
    else:
        assert TOPIC in topics, f"topic {TOPIC} lost across down/up: {sorted(topics)}"
    partitions = len(admin.list_topics(topic=TOPIC, timeout=10).topics[TOPIC].partitions)
    assert partitions == 6, f"{TOPIC} has {partitions} partitions"

    consumer = Consumer({
        "bootstrap.servers": brokers, "group.id": f"smoke-{uuid.uuid4()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([TOPIC])
    got: dict[bytes, bytes] = {}
    deadline = time.monotonic() + 30
    while len(got) < len(MESSAGES) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got[msg.key()] = msg.value()
    consumer.close()
    assert got == MESSAGES, f"consumed {got}"
    print(f"  kafka ok: topic {TOPIC} ({partitions} partitions), consumed {len(got)} messages")


def s3_check(phase: str) -> None:
    import boto3
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    bucket = os.environ["CITYSTREAM_S3_BUCKET"]
    s3 = boto3.client("s3")  # endpoint, keys and region all from the environment
    if phase == "write":
        s3.put_object(Bucket=bucket, Key=OBJ_KEY, Body=b"hello citystream")
    assert s3.get_object(Bucket=bucket, Key=OBJ_KEY)["Body"].read() == b"hello citystream"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="smoke/").get("Contents", [])]
    assert OBJ_KEY in keys, keys

    # pyarrow takes keys and region from the environment but ignores AWS_ENDPOINT_URL
    # (apache/arrow#49643), so the endpoint is passed on explicitly.
    s3fs = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"])
    path = f"{bucket}/{PARQUET_KEY}"
    table = pa.table({"sensor": ["a", "b", "c"], "value": [1.5, 2.5, 4.0]})
    if phase == "write":
        pq.write_table(table, path, filesystem=s3fs, compression="zstd")
    back = pq.read_table(path, filesystem=s3fs)
    assert back.equals(table), back
    total = duckdb.sql("select sum(value) from back").fetchall()[0][0]  # duckdb 2: no fetchone()
    assert total == 8.0, total
    print(f"  s3 ok: boto3 put/get/list in {bucket}, pyarrow parquet {PARQUET_KEY} "
          f"({back.num_rows} rows, duckdb sum={total})")


def checks(phase: str) -> None:
    print(f"client checks ({phase}) with {sys.executable}", flush=True)
    kafka_check(phase)
    s3_check(phase)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--state")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--port-offset", type=int, default=100)
    parser.add_argument("--check", choices=["write", "persisted"], help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.check:
        checks(opts.check)
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
