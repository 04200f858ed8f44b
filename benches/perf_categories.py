#!/usr/bin/env python3
"""Apportions a `perf record --call-graph dwarf` profile of `citystream run` to its parts.

Usage: perf script -i perf.data | python3 benches/perf_categories.py

Each sample is given to the first category (in the order below) whose pattern matches the start
of some function in its call stack, so e.g. zstd inside Parquet encoding counts as zstd, and
serde_json inside decoding counts as decoding. Also prints the share of samples whose leaf
is the allocator (malloc/free/realloc/memmove), whatever the category.
"""
import collections
import re
import sys

CATEGORIES = [
    ("zstd context create/free (per column chunk)", re.compile(r"ZSTD_(create|free)[CD]Ctx|ZSTD_initCCtx|zstd_safe::[CD]Ctx as core::default|core::ptr::drop_in_place<zstd_safe")),
    ("zstd compression", re.compile(r"(ZSTD_|HUF_|FSE_)")),
    ("lz4 decompression (librdkafka)", re.compile(r"LZ4_")),
    ("JSON decode + validation (contract::decode)", re.compile(r"citystream::contract::decode")),
    ("Arrow building (BatchBuilder)", re.compile(r"citystream::contract::schema::")),
    ("Parquet encoding (excluding zstd)", re.compile(r"parquet::")),
    ("reclocking (PartitionClock)", re.compile(r"citystream::reclock")),
    ("manifests / commit", re.compile(r"citystream::(commit|dataflow::commit)")),
    ("file output (object_store local dir, tokio, kernel fs)", re.compile(r"object_store::|citystream::sink::upload|citystream::lake|ext4_|vfs_|do_renameat|do_sys_open|__x64_sys_(write|openat|rename|close|fsync|unlink)")),
    ("librdkafka (fetch, queues; excluding lz4)", re.compile(r"rd_")),
    ("sink operator (open files, row hand-off)", re.compile(r"citystream::dataflow::sink|citystream::sink::")),
    ("source operator (polling, rows, hand-off)", re.compile(r"citystream::dataflow::source|citystream::source::|core::ptr::drop_in_place<citystream::dataflow::Row|citystream::dataflow::Row")),
    ("timely runtime (scheduling, exchange, progress)", re.compile(r"timely(_communication)?::")),
]
ALLOC = re.compile(r"^(_int_malloc|_int_free|malloc|free|realloc|calloc|cfree|__libc_(malloc|free|calloc|realloc)|unlink_chunk|malloc_consolidate|_int_realloc|__memmove\w*|__memcpy\w*|__memset\w*)")


def symbol(frame):
    """The function of a perf-script frame, without offset, DSO and leading `<`."""
    return frame.split(" (", 1)[0].rsplit("+0x", 1)[0].lstrip("<")


def categorise(frames):
    syms = [symbol(f) for f in frames]
    return next((name for name, rx in CATEGORIES if any(rx.match(s) for s in syms)), None)


def samples(lines):
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head, frames
            head, frames = None, []
        elif not line.startswith(("\t", " ")):
            head, frames = line, []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else parts[0])
    if head is not None:
        yield head, frames


def main():
    counts = collections.Counter()
    threads = collections.Counter()
    alloc = 0
    total = 0
    for head, frames in samples(sys.stdin):
        total += 1
        comm = head.split(None, 1)[0] if head else "?"
        threads[re.sub(r"\d+$", "N", comm)] += 1
        cat = categorise(frames)
        if cat is None:
            cat = "other in thread " + re.sub(r"\d+$", "N", comm)
        counts[cat] += 1
        if frames and ALLOC.match(frames[0]):
            alloc += 1
    if not total:
        sys.exit("no samples on stdin")
    print(f"{total} samples")
    for name, n in counts.most_common():
        print(f"{100 * n / total:6.1f}%  {name}")
    print(f"{100 * alloc / total:6.1f}%  (of all samples: leaf in malloc/free/memcpy, spread over the categories above)")
    print("by thread: " + ", ".join(f"{t} {100 * n / total:.1f}%" for t, n in threads.most_common()))


if __name__ == "__main__":
    main()
