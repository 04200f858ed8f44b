#!/usr/bin/env python3
"""Runs a command and measures it as a whole process tree: wall time, peak RSS, CPU seconds.

Usage: python3 benches/measure.py --json OUT.json --log OUT.log -- COMMAND [ARGS...]

Every 50 ms it reads /proc for the command and all its descendants (a Spark driver's JVM, the
processes of a citystream cluster) and records the peak of their summed resident memory and
the peak of any single process's. CPU seconds are the last utime + stime seen of every process
of the tree. stdout and stderr of the command go to the log. Exits with the command's status.
Standard library only: it runs with any python3 on Linux.
"""
import argparse
import json
import os
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
HZ = os.sysconf("SC_CLK_TCK")


def proc_table():
    """pid -> (ppid, rss bytes, cpu seconds) for every readable process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        # rest[0] = state, [1] = ppid, [11] = utime, [12] = stime, [21] = rss (pages)
        try:
            out[int(name)] = (int(rest[1]), int(rest[21]) * PAGE, (int(rest[11]) + int(rest[12])) / HZ)
        except (IndexError, ValueError):
            continue
    return out


def tree(table, root):
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            seen.append(pid)
            stack.extend(children.get(pid, []))
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the measurements")
    ap.add_argument("--log", required=True, help="where the command's output goes")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("no command given")
    peak_tree = peak_one = 0
    cpu = {}
    with open(a.log, "wb") as log:
        start = time.monotonic()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while True:
            table = proc_table()
            pids = tree(table, p.pid)
            rss = [table[pid][1] for pid in pids]
            peak_tree = max(peak_tree, sum(rss))
            peak_one = max(peak_one, max(rss, default=0))
            for pid in pids:
                cpu[pid] = table[pid][2]
            if p.poll() is not None:
                break
            time.sleep(a.interval)
        wall = time.monotonic() - start
    result = {
        "command": cmd,
        "exit_code": p.returncode,
        "wall_s": wall,
        "peak_rss_tree_mib": peak_tree / 2**20,
        "peak_rss_process_mib": peak_one / 2**20,
        "cpu_s": sum(cpu.values()),
        "processes_seen": len(cpu),
    }
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
