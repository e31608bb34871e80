"""Region-feature loading speed: every FeatureStore format, in-memory vs just-in-time.

Writes N images x R regions x D-dim float32 features (+ boxes) in each format to a temp folder, then
measures, per format:

- write:              ``write_features`` (streamed, temp + rename)
- in-memory load:     ``FeatureStore.open(in_memory=True)`` (everything read up front, ``--workers`` threads)
- JIT first pass:     lazy open (the TSV builds its offset index here) + ``store[id]`` over every id, LRU cache ``--cache``
- JIT cached pass:    ``store[id]`` again over the ``--cache`` most recently used ids (all cache hits)
- JIT get_many(B):    lazy open (TSV: cached offset index) + ``get_many`` batches of ``--batch``, no cache,
                      the DataLoader-like pattern (parallel reads on ``--workers`` threads)

MB/s counts the float32 payload (regions + boxes). "peak MB" is the most memory allocated (Python and
numpy, via tracemalloc) at any time during the step, above what was allocated before it (LMDB's memory
map and the OS page cache are not counted). Files were just written, so reads come from the OS page
cache: a cold disk is slower.

    python benchmarks/feature_loading.py                  # 2000 x 36 x 2048, all formats
    python benchmarks/feature_loading.py --n 500 --formats tsv,hdf5
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from xmodal.data.features import FeatureStore, RegionFeatures, write_features
from xmodal.data.features.tsv import index_path

NAMES = {"npz": "feats_npz", "tsv": "feats.tsv", "hdf5": "feats.h5", "lmdb": "feats.lmdb"}


class PeakMemory:
    """Peak of memory allocated through Python and numpy during a block, above its start (tracemalloc)."""

    def __enter__(self) -> "PeakMemory":
        tracemalloc.start()
        self.start = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc) -> None:
        self.mb = (tracemalloc.get_traced_memory()[1] - self.start) / 1e6
        tracemalloc.stop()


def make_records(n: int, regions: int, dim: int, seed: int = 0) -> dict[str, RegionFeatures]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        xy = rng.uniform(0, 500, (regions, 2)).astype(np.float32)
        out[f"COCO_train2014_{i:012d}"] = RegionFeatures(
            rng.random((regions, dim), dtype=np.float32), np.concatenate([xy, xy + 50], axis=1), 640, 480)
    return out


def measure(fn, memory: bool, release=lambda result: None) -> tuple[float, float, object]:
    """Seconds and result of an untraced run, then (if ``memory``) the peak of a second, traced run
    whose result is released at once (tracemalloc slows allocation-heavy code 2-3x, so it never
    overlaps the timing)."""
    t0 = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t0
    peak = float("nan")
    if memory:
        with PeakMemory() as mem:
            release(fn())
        peak = mem.mb
    return dt, peak, result


def _close(result) -> None:
    store = result[0] if isinstance(result, tuple) else result
    if isinstance(store, FeatureStore):
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images")
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--formats", default="npz,tsv,hdf5,lmdb")
    ap.add_argument("--cache", type=int, default=256, help="LRU cache size of the JIT passes")
    ap.add_argument("--batch", type=int, default=64, help="get_many batch size")
    ap.add_argument("--workers", type=int, default=4, help="reader threads")
    ap.add_argument("--no-memory", action="store_true", help="skip the traced runs that measure peak memory")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed afterwards)")
    args = ap.parse_args()

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"{args.n} images x {args.regions} regions x {args.dim}-d float32, cache {args.cache}, "
          f"{args.workers} reader threads, {os.cpu_count()} CPUs")
    records = make_records(args.n, args.regions, args.dim)
    payload = sum(r.regions.nbytes + r.boxes.nbytes for r in records.values())
    ids = list(records)
    print(f"payload {payload / 1e6:.0f} MB")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="xmodal-feat-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(fmt: str, mode: str, open_s: float | None, seconds: float, count: int, nbytes: float, peak: float) -> None:
        rows.append((fmt, mode, "" if open_s is None else f"{open_s:.2f}", f"{count / seconds:,.0f}",
                     f"{nbytes / seconds / 1e6:,.0f}", "" if peak != peak else f"{peak:,.0f}"))

    try:
        for fmt in args.formats.split(","):
            path = work / NAMES[fmt]
            mem = not args.no_memory
            dt, peak, _ = measure(lambda: write_features(records, path, fmt, overwrite=True), mem)
            size = sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size
            add(fmt, f"write ({size / 1e6:,.0f} MB on disk)", None, dt, args.n, payload, peak)

            def load():
                st = FeatureStore.open(path, in_memory=True, num_workers=args.workers)
                assert len(st) == args.n and np.array_equal(st[ids[-1]].regions, records[ids[-1]].regions)

            dt, peak, _ = measure(load, mem)
            add(fmt, "in-memory load", None, dt, args.n, payload, peak)

            def first_pass():
                if fmt == "tsv":  # measure the indexing pass
                    index_path(path).unlink(missing_ok=True)
                t0 = time.perf_counter()
                st = FeatureStore.open(path, cache_size=args.cache, num_workers=args.workers)
                opened = time.perf_counter() - t0
                for k in st:
                    st[k]
                return st, opened

            dt, peak, (store, opened) = measure(first_pass, mem, _close)
            add(fmt, "JIT first pass", opened, dt, args.n, payload, peak)
            recent = ids[-args.cache:]
            dt, peak, _ = measure(lambda: [store[k] for k in recent], mem)
            assert store.cache_info()["hits"] >= len(recent)
            add(fmt, "JIT cached pass", None, dt, len(recent), payload * len(recent) / args.n, peak)
            store.close()

            def batched():
                t0 = time.perf_counter()
                st = FeatureStore.open(path, cache_size=0, num_workers=args.workers)
                opened = time.perf_counter() - t0
                for s in range(0, len(ids), args.batch):
                    st.get_many(ids[s:s + args.batch])
                st.close()
                return opened

            dt, peak, opened = measure(batched, mem)
            add(fmt, f"JIT get_many({args.batch})", opened, dt, args.n, payload, peak)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    head = ("format", "mode", "open s", "images/s", "MB/s", "peak MB")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")


if __name__ == "__main__":
    main()
