"""Search speed: xmodal's FaissIndex vs calling FAISS directly on the same vectors.

Measures queries/s for the same index types with the same parameters, so the ratio is xmodal's own
overhead (input checks, string-id lookup, result assembly). Target: ratio <= 1.1.

    python benchmarks/search_speed.py                 # 100k x 512, flat + HNSW
    python benchmarks/search_speed.py --n 20000 --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from xmodal import FaissIndex


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def time_pair(fa, fb, queries: np.ndarray, batch: int, repeats: int) -> tuple[float, float]:
    """Median queries/s of ``fa`` and ``fb`` over ``repeats`` passes through ``queries`` in batches of
    ``batch``. The two are interleaved call by call (order alternating), so load from other processes
    on a shared machine falls on both sides alike and the ratio stays meaningful."""
    ra, rb = [], []
    for r in range(repeats):
        ta = tb = 0.0
        for j, s in enumerate(range(0, len(queries), batch)):
            chunk = queries[s:s + batch]
            for f in ((fa, fb) if (r + j) % 2 == 0 else (fb, fa)):
                t0 = time.perf_counter()
                f(chunk)
                dt = time.perf_counter() - t0
                if f is fa:
                    ta += dt
                else:
                    tb += dt
        ra.append(len(queries) / ta)
        rb.append(len(queries) / tb)
    return statistics.median(ra), statistics.median(rb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="flat only")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((args.n, args.dim)))
    q = unit(rng.standard_normal((args.queries, args.dim)))
    ids = [f"img/{i:07d}.jpg" for i in range(args.n)]
    print(f"{args.n:,} x {args.dim} float32 vectors, {args.queries} queries, k={args.k}, "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")

    kinds = ["flat"] if args.quick else ["flat", "hnsw"]
    rows = []
    for kind in kinds:
        ours = FaissIndex(args.dim, kind=kind)
        t0 = time.perf_counter()
        ours.add(ids, x)
        build = time.perf_counter() - t0
        if kind == "flat":
            raw = faiss.IndexFlatIP(args.dim)
        else:
            raw = faiss.IndexHNSWFlat(args.dim, ours.params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            raw.hnsw.efConstruction = ours.params["ef_construction"]
        raw.add(x)
        if kind == "hnsw":
            raw.hnsw.efSearch = ours.params["ef_search"]
        for batch in (1, 100):
            ours_qps, raw_qps = time_pair(lambda b: ours.search(b, args.k), lambda b: raw.search(b, args.k), q, batch,
                                          args.repeats)
            rows.append((kind, batch, ours_qps, raw_qps, raw_qps / ours_qps, build))

    print(f"\n{'index':<6} {'batch':>5} {'xmodal q/s':>12} {'faiss q/s':>12} {'time ratio':>11}  {'xmodal build s':>14}")
    for kind, batch, a, b, ratio, build in rows:
        print(f"{kind:<6} {batch:>5} {a:>12,.0f} {b:>12,.0f} {ratio:>11.3f}  {build:>14.1f}")
    print("\ntime ratio = xmodal time / raw faiss time for the same queries (target <= 1.1)")


if __name__ == "__main__":
    main()
