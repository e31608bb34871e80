"""Compact embeddings: recall@10 against exact float32 search and bytes per item, fp16 / int8 / binary codes
with and without re-scoring, all measured in one run on the same vectors.

Data: ``--n`` items of ``--dim`` dims around ``--clusters`` random centres (Gaussian spread ``--spread`` per
dimension, L2-normalised); queries are ``--queries`` held-out vectors of the same distribution. Ground truth:
exact float32 inner-product top-10 (faiss ``IndexFlatIP``). Every row except the "faiss IndexLSH" one is xmodal's
own ``FaissIndex(quantize=..., rescore=...)`` -- the code ``xmodal index --quantize`` runs.

Bytes per item: "searched" = the codes scanned by every search (resident in memory); "re-scoring store" = the
finer copy only the candidates' rows of which are read (memory-mapped from index.faiss once the index is
saved and reopened); "index.faiss" = the saved file's size per item (codes + store + 8 bytes of ids), measured.
Timings are ms per query (batches of 100 queries, 2 threads), for orientation only.

    flock /tmp/xmodal-bench.lock python benchmarks/quantize.py              # 100k x 512, ~3 min on 2 cores
    python benchmarks/quantize.py --n 20000 --queries 200                   # quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from xmodal import FaissIndex

ROWS = [  # (quantize, rescore, rescore_factor)
    ("none", None, None),
    ("fp16", "none", None),
    ("int8", "none", None),
    ("int8", "fp16", 1),
    ("int8", "fp16", 2),
    ("int8", "fp16", 4),
    ("binary", "int8", 1),
    ("binary", "int8", 10),
    ("binary", "int8", 20),
    ("binary", "fp16", 20),
    ("binary", "fp16", 50),
]


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 50_000):  # in blocks: no float64 temporaries of the whole set
        m = min(50_000, n - s)
        x = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def timed_search(search, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    found = np.concatenate([search(q[s:s + 100], k) for s in range(0, len(q), 100)])
    return found, 1000 * (time.perf_counter() - t0) / len(q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.04, help="per-dimension noise around a centre")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    k = 10

    data = clustered(args.n + args.queries, args.dim, args.clusters, args.spread)
    x, q = data[:args.n], data[args.n:]
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    top, truth = exact.search(q, k + 1)
    truth = truth[:, :k]
    print(f"{args.n:,} items x {args.dim} dims, {args.clusters} clusters (spread {args.spread}), {len(q)} held-out "
          f"queries; median score of the 10th hit {np.median(top[:, 9]):.3f}, median gap 10th-11th "
          f"{np.median(top[:, 9] - top[:, 10]):.5f}")
    ids = [str(i) for i in range(args.n)]
    f32 = 4 * args.dim

    header = (f"{'codes searched':<15} {'re-scoring':<16} {'recall@10':>9} {'searched B':>10} {'store B':>8} "
              f"{'total B':>8} {'x float32':>9} {'file B':>7} {'ms/query':>8}")
    print(header)
    print("-" * len(header))

    # the binary codes alone (no re-scoring): faiss IndexLSH with the trained thresholds xmodal uses
    lsh = faiss.IndexLSH(args.dim, args.dim, False, True)
    lsh.train(x)
    lsh.add(x)
    found, ms = timed_search(lambda qq, kk: lsh.search(qq, kk)[1], q, k)
    b = args.dim / 8
    print(f"{'binary (LSH)':<15} {'none (Hamming)':<16} {recall_at(found, truth):>9.4f} {b:>10.0f} {0:>8.0f} "
          f"{b:>8.0f} {b / f32:>9.3f} {'-':>7} {ms:>8.2f}")
    del lsh

    for quantize, rescore, factor in ROWS:
        index = FaissIndex(args.dim, quantize=quantize, rescore=rescore, rescore_factor=factor)
        index.add(ids, x)
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp) / "idx")
            stored = next(Path(tmp, "idx").glob("index*.faiss")).stat().st_size / args.n
            loaded = FaissIndex.load(Path(tmp) / "idx")  # memory-mapped, as a served index is
            found, ms = timed_search(lambda qq, kk: loaded._search_labels(qq, kk)[1], q, k)
            del loaded
        del index
        bpi = {"searched": f32, "rescore_store": 0.0, "total": f32}
        if quantize != "none":
            from xmodal.indexes.quantize import resolve

            bpi = resolve(quantize, rescore, factor, "flat").bytes_per_item(args.dim)
        name = "float32" if quantize == "none" else quantize
        how = "-" if not rescore or rescore == "none" else f"{rescore}, {factor}x k"
        print(f"{name:<15} {how:<16} {recall_at(found, truth):>9.4f} {bpi['searched']:>10.0f} "
              f"{bpi['rescore_store']:>8.0f} {bpi['total']:>8.0f} {bpi['total'] / f32:>9.3f} {stored:>7.0f} {ms:>8.2f}")
    print("searched B: codes scanned per search (resident); store B: re-scoring copy, memory-mapped, only candidate "
          "rows read; file B: index.faiss per item (with 8 B ids); x float32: total B / float32 B.")


if __name__ == "__main__":
    main()
