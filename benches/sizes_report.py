#!/usr/bin/env python3
"""Cost as the work grows: joins the per-size reports of `benches/e2e.sh --sizes` into one table,
a JSON report and a plot.

Usage (benches/e2e.sh runs it with its bench venv, which has matplotlib):
  python benches/sizes_report.py --json OUT.json --png OUT.png SIZE-REPORT.json...

Each SIZE-REPORT is what `benches/e2e.sh --peers-only --records N --json …` wrote. Per engine
(the raw-consume ceiling, citystream -w 2, Spark, Flink; with --s3 their runs into S3 too) and
size it takes records/s, CPU-µs per record, peak RSS (the largest single process) and objects
written per 1,000 records, and reports for each engine how far the per-record CPU and the peak
RSS moved from the smallest to the largest size (the target: within 10 %).
"""
import argparse
import json
import sys

ENGINES = [  # (result name, label); the raw ceiling is found by the report's "raw_ceiling"
    ("raw", "raw consume (ceiling)"),
    ("citystream-w2", "citystream -w 2"),
    ("spark", "Spark"),
    ("flink", "Flink"),
    ("citystream-w2-s3", "citystream -w 2 → S3"),
    ("spark-s3", "Spark → S3 (s3a)"),
    ("flink-s3", "Flink → S3"),
]
KEYS = ["records_per_s", "cpu_us_per_record", "peak_rss_process_mib", "peak_rss_tree_mib", "objects", "objects_per_1k_records"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("reports", nargs="+")
    a = ap.parse_args()

    reports = sorted((json.load(open(p)) for p in a.reports), key=lambda r: r["records"])
    sizes = [r["records"] for r in reports]
    series = {}
    for rep in reports:
        by = {r["name"]: r for r in rep["results"]}
        for name, label in ENGINES:
            r = by.get(rep["raw_ceiling"]) if name == "raw" else by.get(name)
            if r is None:
                continue
            s = series.setdefault(name, {"label": label, "points": []})
            s["points"].append({"records": rep["records"], **{k: r.get(k) for k in KEYS}})
    growth = {}
    for name, s in series.items():
        pts = s["points"]
        if len(pts) < 2:
            continue
        first, last = pts[0], pts[-1]
        growth[name] = {
            "from_records": first["records"], "to_records": last["records"],
            "cpu_us_per_record_change": last["cpu_us_per_record"] / first["cpu_us_per_record"] - 1,
            "peak_rss_change": last["peak_rss_process_mib"] / first["peak_rss_process_mib"] - 1,
            "peak_rss_max_mib": max(p["peak_rss_process_mib"] for p in pts),
        }
    machine = reports[-1]["machine"]
    out = {"benchmark": "e2e-sizes", "sizes": sizes, "machine": machine, "commit": reports[-1]["commit"],
           "series": series, "growth": growth, "reports": a.reports,
           "ratios": {rep["records"]: {"spark": rep.get("ratio_citystream_over_spark"), "flink": rep.get("ratio_citystream_over_flink"),
                                       "raw_consume": rep.get("ratio_citystream_over_raw_consume"),
                                       "s3": rep.get("s3_ratios_citystream_over")} for rep in reports}}
    with open(a.json, "w") as f:
        json.dump(out, f, indent=2)

    print(f"\ncost as the work grows; {machine['nproc']} cores ({machine['cpu']}), {machine['mem_gib']} GiB\n")
    print(f"| {'engine':<24} | {'records':>11} | {'records/s':>10} | {'CPU µs/rec':>10} | {'peak RSS MiB':>12} | {'objects':>8} | {'objects/1k rec':>14} |")
    print(f"|{'-' * 26}|{'-' * 12}:|{'-' * 11}:|{'-' * 11}:|{'-' * 13}:|{'-' * 9}:|{'-' * 15}:|")
    for name, s in series.items():
        for p in s["points"]:
            objects = f"{p['objects']:>8,}" if p["objects"] is not None else f"{'':>8}"
            per_k = f"{p['objects_per_1k_records']:>14.2f}" if p["objects_per_1k_records"] is not None else f"{'':>14}"
            print(f"| {s['label']:<24} | {p['records']:>11,} | {p['records_per_s']:>10,.0f} | {p['cpu_us_per_record']:>10.2f} "
                  f"| {p['peak_rss_process_mib']:>12.0f} | {objects} | {per_k} |")
    print()
    for name, g in growth.items():
        print(f"{series[name]['label']}: from {g['from_records']:,} to {g['to_records']:,} records, CPU per record "
              f"{g['cpu_us_per_record_change'] * 100:+.1f} %, peak RSS {g['peak_rss_change'] * 100:+.1f} % (largest {g['peak_rss_max_mib']:.0f} MiB)")
    for size, r in out["ratios"].items():
        fmt = lambda x: f"{x:.2f}" if x is not None else "n/a"
        s3 = " ".join(f"s3:citystream/{k}={v:.2f}" for k, v in (r["s3"] or {}).items())
        print(f"{size:>11,} records: ratio citystream/spark={fmt(r['spark'])} citystream/flink={fmt(r['flink'])} "
              f"citystream/raw-consume={fmt(r['raw_consume'])} {s3}".rstrip())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [("records_per_s", "records/s", True), ("cpu_us_per_record", "CPU µs per record", True),
              ("peak_rss_process_mib", "peak RSS per process (MiB)", True), ("objects_per_1k_records", "objects per 1,000 records", False)]
    for ax, (key, title, log_y) in zip(axes.flat, panels):
        for name, s in series.items():
            pts = [p for p in s["points"] if p[key] is not None]
            if not pts:
                continue
            ax.plot([p["records"] for p in pts], [p[key] for p in pts], marker="o", label=s["label"],
                    linestyle="--" if name.endswith("-s3") else "-")
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("records")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"citystream e2e, cost as the work grows ({machine['nproc']} cores, {machine['cpu']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.json} and {a.png}")


if __name__ == "__main__":
    sys.exit(main())
