#!/usr/bin/env python3
"""Polls a citystream lake while a cluster writes (and is killed), as two kinds of reader would:

- a Delta reader (the Python `deltalake` package): every table at its newest version;
- a Hive-layout reader (pyarrow datasets listing the `date=/hour=` folders, as Athena's
  non-Delta tables or `spark.read.parquet` do).

At every poll it records the (topic, partition, offset) keys each reader sees. When the stop file
appears it reads the final lake through Delta and writes a JSON result: polls, how many polls saw
a duplicate or a record not in the final lake (per reader), read errors, and the final row count.
With --check-compactions it only compares, for every OPTIMIZE commit of every table, the rows of
the version before with the rows of the compaction's version (they must be identical), prints
that and exits (run it before a vacuum deletes the files of the older versions).
"""
import argparse
import json
import os
import sys
import time

import deltalake
import pyarrow as pa
import pyarrow.dataset as pads

import lakeio

STREAMS = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]


def options(output):
    uri, opts = lakeio.delta_location(output)
    fs, root = lakeio.filesystem(output)
    return uri, opts, fs, root


def keys_of(table, topic):
    parts = table.column("_partition").to_pylist()
    offs = table.column("_offset").to_pylist()
    topics = table.column("topic").to_pylist() if topic is None else [topic] * len(parts)
    return list(zip(topics, parts, offs))


def delta_keys(root, opts, prefix, version=None, tables=None):
    """Every key of every table through Delta; tables that do not exist yet are empty."""
    out = []
    for name, folder, stream in tables or [(s, s, s) for s in STREAMS] + [("dead_letter", "_dead_letter", None)]:
        uri = f"{root}/{folder}"
        if not deltalake.DeltaTable.is_deltatable(uri, storage_options=opts):
            continue
        dt = deltalake.DeltaTable(uri, storage_options=opts, version=version)
        cols = ["_partition", "_offset"] if stream else ["topic", "_partition", "_offset"]
        t = pa.table(dt.to_pyarrow_table(columns=cols))
        out.extend(keys_of(t, prefix + stream if stream else None))
    return out


def hive_keys(fs, base, prefix):
    out = []
    for name, folder, stream in [(s, s, s) for s in STREAMS] + [("dead_letter", "_dead_letter", None)]:
        try:
            ds = pads.dataset(f"{base}/{folder}", filesystem=fs, format="parquet", partitioning="hive")
            cols = ["_partition", "_offset"] if stream else ["topic", "_partition", "_offset"]
            t = ds.to_table(columns=cols)
        except FileNotFoundError:
            continue
        out.extend(keys_of(t, prefix + stream if stream else None))
    return out


def compaction_checks(root, opts, prefix):
    """For every OPTIMIZE commit: the rows before and at it are identical. Returns (checked, differing)."""
    checked, differing = 0, []
    for name, folder, stream in [(s, s, s) for s in STREAMS] + [("dead_letter", "_dead_letter", None)]:
        uri = f"{root}/{folder}"
        if not deltalake.DeltaTable.is_deltatable(uri, storage_options=opts):
            continue
        dt = deltalake.DeltaTable(uri, storage_options=opts)
        for entry in dt.history():
            if entry.get("operation") != "OPTIMIZE":
                continue
            v = entry["version"]
            one = [(name, folder, stream)]
            before = sorted(delta_keys(root, opts, prefix, v - 1, one))
            after = sorted(delta_keys(root, opts, prefix, v, one))
            checked += 1
            if before != after:
                differing.append({"table": name, "version": v, "before": len(before), "after": len(after)})
    return checked, differing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--stop", help="poll until this file exists")
    ap.add_argument("--result")
    ap.add_argument("--interval", type=float, default=0.3)
    ap.add_argument("--check-compactions", action="store_true", help="only compare the rows before and at every OPTIMIZE commit, print them, exit")
    args = ap.parse_args()
    root, opts, fs, base = options(args.output)
    if args.check_compactions:
        checked, differing = compaction_checks(root, opts, args.prefix)
        print(json.dumps({"compactions_checked": checked, "compactions_differing": differing}))
        return
    polls = []
    errors = {"delta": 0, "hive": 0}
    while not os.path.exists(args.stop):
        poll = {}
        try:
            poll["delta"] = delta_keys(root, opts, args.prefix)
        except Exception as e:  # noqa: BLE001 - every reader error is counted and reported
            errors["delta"] += 1
            print(f"delta read error: {e}", file=sys.stderr)
        try:
            poll["hive"] = hive_keys(fs, base, args.prefix)
        except Exception as e:  # noqa: BLE001 - files deleted between listing and reading, etc.
            errors["hive"] += 1
            print(f"hive read error: {e}", file=sys.stderr)
        polls.append(poll)
        time.sleep(args.interval)

    final = set(delta_keys(root, opts, args.prefix))
    result = {"polls": len(polls), "final_rows": len(final), "delta_errors": errors["delta"], "hive_errors": errors["hive"]}
    for reader in ["delta", "hive"]:
        seen = [p[reader] for p in polls if reader in p]
        result[f"polls_with_rows_{reader}"] = sum(1 for s in seen if s)
        result[f"{reader}_duplicates"] = sum(1 for s in seen if len(s) != len(set(s)))
        result[f"{reader}_not_final"] = sum(1 for s in seen if not set(s) <= final)
        result[f"{reader}_max_duplicate_rows"] = max([len(s) - len(set(s)) for s in seen] or [0])
    result["polls_with_rows"] = result["polls_with_rows_delta"]
    with open(args.result, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    lakeio.run(main)
