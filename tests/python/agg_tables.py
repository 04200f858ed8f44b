#!/usr/bin/env python3
"""The aggregate tables of a citystream lake, read through Delta with the Python `deltalake`
package: prints them, or compares them with another lake's.

  agg_tables.py --output LAKE                  one JSON line: {table: [row, ...]} (rows sorted, times in µs)
  agg_tables.py --output LAKE --against OTHER  exits 1 unless every aggregate table of LAKE holds the
                                               rows of OTHER's (same keys; counts and times equal,
                                               floats within 1e-9 relative)
"""
import argparse
import json

import deltalake
import pyarrow as pa
import pyarrow.compute as pc

import lakeio

TABLES = {  # name -> key columns
    "vehicle_speed_minute": ["device_id", "window_start"],
    "weather_hourly": ["device_id", "hour_start"],
    "emergency_hourly": ["incident", "status", "hour_start"],
    "vehicle_latest": ["device_id"],
}


def read(output):
    root, opts = lakeio.delta_location(output)
    tables = {}
    for name in TABLES:
        uri = f"{root}/agg/{name}"
        if not deltalake.DeltaTable.is_deltatable(uri, storage_options=opts):
            continue
        t = deltalake.DeltaTable(uri, storage_options=opts).to_pyarrow_table()
        columns = {}
        for field in t.schema:
            col = t[field.name]
            if pa.types.is_timestamp(field.type):
                col = pc.cast(col, pa.int64())
            elif field.name == "date":
                col = pc.cast(col, pa.string())
            columns[field.name] = col
        rows = pa.table(columns).to_pylist()
        rows.sort(key=lambda r: tuple(r[k] for k in TABLES[name]))
        tables[name] = rows
    return tables


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", required=True)
    ap.add_argument("--against")
    args = ap.parse_args()
    mine = read(args.output)
    if not args.against:
        print(json.dumps(mine))
        return
    theirs = read(args.against)
    problems = []
    if sorted(mine) != sorted(theirs):
        problems.append(f"tables {sorted(mine)} against {sorted(theirs)}")
    for name in sorted(set(mine) & set(theirs)):
        keys = TABLES[name]
        a = {tuple(r[k] for k in keys): r for r in mine[name]}
        b = {tuple(r[k] for k in keys): r for r in theirs[name]}
        if set(a) != set(b):
            problems.append(f"{name}: keys only here {sorted(set(a) - set(b))[:3]}, only there {sorted(set(b) - set(a))[:3]}")
        for key in sorted(set(a) & set(b)):
            differ = [c for c in a[key] if not close(a[key][c], b[key].get(c))]
            if differ:
                problems.append(f"{name} {key}: {[(c, a[key][c], b[key].get(c)) for c in differ]}")
    lakeio.report({t: len(r) for t, r in mine.items()}, problems)


if __name__ == "__main__":
    lakeio.run(main)
