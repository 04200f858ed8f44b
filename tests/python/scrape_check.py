"""Parses Prometheus scrapes of citystream with the real parser, and checks the Grafana
dashboard's queries against them.

Usage: scrape_check.py SCRAPE_FILE... [--dashboard deploy/grafana/citystream.json]

Each file is one `/metrics` answer (OpenMetrics text). Each is parsed with prometheus-client's
`openmetrics.parser.text_string_to_metric_families` (strict: it raises on anything that is not
valid OpenMetrics, e.g. a counter without `_total`, a bad label, a missing `# EOF`), and also
with the classic `parser.text_string_to_metric_families` of the Prometheus text format.
With --dashboard, every metric name in every panel's PromQL expression must name a family of
the scrapes (histogram/counter sample suffixes allowed). Prints one JSON object:
{"scrapes": [{"families": {name: type}, "samples": [[name, labels, value], ...]}...],
 "dashboard": {"panels": n, "queries": n, "metrics": [...], "missing": [...]}}.
"""

import argparse
import json
import re
import sys

from prometheus_client import parser as classic
from prometheus_client.openmetrics import parser as openmetrics


def parse(text):
    families = {}
    samples = []
    for fam in openmetrics.text_string_to_metric_families(text):
        families[fam.name] = fam.type
        for s in fam.samples:
            samples.append([s.name, dict(s.labels), s.value])
    # The classic parser must read it too (what older Prometheus servers and tools use).
    classic_names = {f.name for f in classic.text_string_to_metric_families(text.replace("# EOF\n", ""))}
    if not classic_names:
        raise SystemExit("the classic text parser found no metric family")
    return {"families": families, "samples": samples}


SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
PROMQL_WORDS = {"sum", "rate", "irate", "increase", "by", "without", "histogram_quantile", "max", "min", "avg",
                "time", "deriv", "delta", "le", "on", "ignoring", "group_left", "group_right", "clamp_min",
                "count", "offset", "and", "or", "unless", "topk", "bottomk", "abs", "changes", "resets",
                "label_replace", "vector", "scalar"}


def dashboard_metrics(path):
    with open(path) as f:
        dash = json.load(f)
    panels = dash.get("panels", [])
    exprs = []
    for p in panels:
        for t in p.get("targets", []):
            if "expr" in t:
                exprs.append(t["expr"])
    names = set()
    for e in exprs:
        # Drop label matchers and range selectors, then take identifiers that are metric names.
        bare = re.sub(r"\{[^}]*\}", "", e)
        bare = re.sub(r"\[[^\]]*\]", "", bare)
        for ident in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if ident in PROMQL_WORDS or not (ident.startswith("citystream_") or ident.startswith("process_")):
                continue
            names.add(ident)
    return len(panels), len(exprs), sorted(names)


def family_of(name, families):
    if name in families:
        return name
    for suf in SUFFIXES:
        if name.endswith(suf) and name[: -len(suf)] in families:
            return name[: -len(suf)]
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scrapes", nargs="+")
    ap.add_argument("--dashboard")
    args = ap.parse_args()
    out = {"scrapes": []}
    for path in args.scrapes:
        with open(path) as f:
            out["scrapes"].append(parse(f.read()))
    if args.dashboard:
        panels, queries, names = dashboard_metrics(args.dashboard)
        families = {}
        for s in out["scrapes"]:
            families.update(s["families"])
        missing = [n for n in names if family_of(n, families) is None]
        out["dashboard"] = {"panels": panels, "queries": queries, "metrics": names, "missing": missing}
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
