#!/usr/bin/env python3
"""How a citystream lake is cut into objects, read from its manifests and Parquet files.

Prints one JSON object:
  objects            objects committed (every manifest's files)
  commits            manifests that committed objects
  max_per_key_commit the most objects one commit holds for one (stream, kind, date/hour)
  event_hours        event hours spanned by the rows (first to last hour of any row, inclusive)
  per_epoch_objects  how many objects one object per (epoch, stream) would have given for the
                     on-time rows alone: distinct (stream, epoch of the event time) — a lower
                     bound of what a per-epoch sink wrote
  rows, bytes        rows and bytes committed
Usage: object_stats.py --output DIR --window-seconds 60
"""
import argparse
import collections
import glob
import json
import os
import re

import pyarrow.compute as pc
import pyarrow.parquet as pq

STREAMS = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", required=True)
    ap.add_argument("--window-seconds", type=int, default=60)
    args = ap.parse_args()
    window_us = args.window_seconds * 1_000_000
    hour_us = 3600 * 1_000_000

    manifests = []
    for path in glob.glob(os.path.join(args.output, "_manifests", "*.json")):
        with open(path) as f:
            manifests.append(json.load(f))
    per_key = collections.Counter()
    objects = rows = size = commits = 0
    for m in manifests:
        if m["files"]:
            commits += 1
        for f in m["files"]:
            if f["kind"] == "aggregate":
                continue  # the aggregate tables' files: one per changed partition, not raw objects
            objects += 1
            rows += f["rows"]
            size += f["bytes"]
            hour = re.search(r"date=([0-9-]+)/hour=([0-9]+)/", f["path"]).groups()
            per_key[(m["sequence"], f["stream"], f["kind"], hour)] += 1

    epochs = set()
    lo = hi = None
    for s in STREAMS:
        for path in (p for p in glob.glob(os.path.join(args.output, s, "**", "*.parquet"), recursive=True) if "/_delta_log/" not in p):
            t = pq.read_table(path, columns=["timestamp", "_late"])
            us = pc.cast(t["timestamp"], "int64")
            lo = pc.min(us).as_py() if lo is None else min(lo, pc.min(us).as_py())
            hi = pc.max(us).as_py() if hi is None else max(hi, pc.max(us).as_py())
            on_time = pc.filter(us, pc.invert(t["_late"]))
            for e in set(x // window_us for x in on_time.to_pylist()):
                epochs.add((s, e))
    hours = 0 if lo is None else hi // hour_us - lo // hour_us + 1
    print(json.dumps({
        "objects": objects,
        "commits": commits,
        "max_per_key_commit": max(per_key.values(), default=0),
        "event_hours": hours,
        "per_epoch_objects": len(epochs),
        "rows": rows,
        "bytes": size,
    }))


if __name__ == "__main__":
    main()
