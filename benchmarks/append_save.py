"""Saving a 1% add + 1% remove update: append save (segment + tombstones) vs full rewrite, same run.

For each kind, one index is built and saved, then two identical copies of the folder get the same
update: one saved with appends allowed (default), one with ``SegmentPolicy(append=False)``. Prints
save time, bytes written, reopen time and single-query latency after reopening, and the ratio.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/append_save.py --n 20000 --dim 512 --kinds flat,ivfpq
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.manifest import read_manifest
from xmodal.indexes.segments import SegmentPolicy


def stored(folder: Path) -> dict[str, int]:
    m = read_manifest(folder, verify=False)
    return {m.files.get(n, n): m.path(folder, n).stat().st_size for n in m.checksums}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = args.n // 100
    new = rng.standard_normal((m, args.dim)).astype(np.float32)
    q = x[:200] + 0.05
    opts = {"flat": {}, "hnsw": {"hnsw_m": 16, "ef_construction": 40}, "ivfpq": {}}
    print(f"{args.n:,} x {args.dim}; update = {m} adds + {m} removes, then save")
    print(f"{'kind':<6}{'mode':<8}{'save s':>8}{'written MiB':>12}{'reopen s':>9}{'1-query ms':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            base = Path(tmp) / kind
            idx = FaissIndex(args.dim, kind=kind, **opts[kind])
            idx.add([str(i) for i in range(args.n)], x)
            idx.save(base)
            rows = {}
            for mode in ("append", "full"):
                folder = Path(tmp) / f"{kind}-{mode}"
                shutil.copytree(base, folder)
                index = FaissIndex.load(folder)
                if mode == "full":
                    index.segment_policy = SegmentPolicy(append=False)
                before = stored(folder)
                index.remove([str(i) for i in range(0, args.n, 100)][:m])
                index.add([f"new{i}" for i in range(m)], new)
                t0 = time.perf_counter()
                index.save(folder)
                save = time.perf_counter() - t0
                written = sum(s for n, s in stored(folder).items() if n not in before) / 2**20
                t0 = time.perf_counter()
                again = FaissIndex.load(folder)
                reopen = time.perf_counter() - t0
                again.search(q[:2], 10)
                lat = []
                for i in range(200):
                    t0 = time.perf_counter()
                    again.search(q[i:i + 1], 10)
                    lat.append(time.perf_counter() - t0)
                rows[mode] = (save, written, reopen, 1000 * float(np.median(lat)))
                print(f"{kind:<6}{mode:<8}{save:>8.3f}{written:>12.2f}{reopen:>9.3f}{rows[mode][3]:>11.2f}", flush=True)
            a, f = rows["append"], rows["full"]
            print(f"{kind:<6}{'full/app':<8}{f[0] / a[0]:>8.1f}{f[1] / a[1]:>12.1f}{f[2] / a[2]:>9.1f}{f[3] / a[3]:>11.2f}")


if __name__ == "__main__":
    main()
