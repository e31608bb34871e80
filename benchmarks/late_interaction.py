"""Late-interaction index: recall@10 vs exact MaxSim, latency, bytes/token, build time — xmodal vs fast-plaid.

Data: random-but-clustered token vectors ("topics": each topic has a few token clusters; a document
draws most of its tokens from its topic, a query asks about one topic), so each query's exact top-10
is well defined. Ground truth: exact MaxSim over all documents (torch, chunked).
The peer, fast-plaid (PyPI), pins its own torch, so it runs in its own venv
(benchmarks/.venvs/fastplaid, created on first use) in a subprocess, on the same vectors.

    python benchmarks/late_interaction.py                        # 50k docs x 32 tokens x 128 dims
    python benchmarks/late_interaction.py --docs 20000 --no-peer
    python benchmarks/late_interaction.py --data hard --docs 5000 --nbits 2 --curve 4:64,8:256:1024:0.4 \
        --peer-curve 4:1024,8:4096 --full-vectors         # recall-vs-latency curves on hard tokens
    python benchmarks/late_interaction.py --data hard --docs 5000 --nbits 2 --threads 1,2   # both engines at 1 and 2 threads

Both engines are timed the same way: one batched search call over all queries, divided by their number.
xmodal curve settings are nprobe:ncandidates[:ninteract[:centroid_threshold]] (see MultiVectorIndex).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xmodal.indexes.multivector import MultiVectorIndex, exact_maxsim_topk

PEER_VENV = Path(__file__).parent / ".venvs" / "fastplaid"
PEER_SCRIPT = r"""
import json, sys, time, os, numpy as np, torch
from fast_plaid import search
work, nbits, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settings = json.loads(sys.argv[4]) if len(sys.argv) > 4 else [[8, 4096]]  # [n_ivf_probe, n_full_scores]
threads = json.loads(sys.argv[5]) if len(sys.argv) > 5 else [os.cpu_count()]  # searched once per thread count
torch.set_num_threads(os.cpu_count())
docs = torch.from_numpy(np.load(f"{work}/docs.npy"))
queries = torch.from_numpy(np.load(f"{work}/queries.npy"))
index_dir = f"{work}/fastplaid-{nbits}"
t0 = time.perf_counter()
fp = search.FastPlaid(index=index_dir, device="cpu")
fp.create(documents_embeddings=[d for d in docs], nbits=nbits)
build = time.perf_counter() - t0
fp.search(queries_embeddings=queries[:2], top_k=k, show_progress=False)  # warm-up
size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(index_dir) for f in fs)
runs = []
for nthreads in threads:
    torch.set_num_threads(nthreads)
    for probe, full in settings:
        t0 = time.perf_counter()
        res = fp.search(queries_embeddings=queries, top_k=k, show_progress=False, n_ivf_probe=probe, n_full_scores=full)
        lat = (time.perf_counter() - t0) / len(queries)
        runs.append({"setting": [probe, full], "threads": nthreads, "latency": lat,
                     "ids": [[int(i) for i, _ in r] for r in res]})
print(json.dumps({"build": build, "bytes": size, "latency": runs[0]["latency"], "ids": runs[0]["ids"], "runs": runs}))
"""


def make_data(n_docs: int, tokens: int, dim: int, n_queries: int, q_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    per_topic = 10
    topics = rng.standard_normal((-(-n_docs // per_topic), 8, dim)).astype(np.float32)
    docs = np.empty((n_docs, tokens, dim), dtype=np.float32)
    for s in range(0, n_docs, 5000):
        idx = np.arange(s, min(s + 5000, n_docs))
        on = topics[(idx // per_topic)[:, None], rng.integers(0, 8, (len(idx), tokens))]
        off = rng.standard_normal((len(idx), tokens, dim)).astype(np.float32)
        mix = np.where(rng.random((len(idx), tokens, 1)) < 0.8, on, off) + 0.35 * rng.standard_normal((len(idx), tokens, dim))
        docs[idx] = mix / np.linalg.norm(mix, axis=-1, keepdims=True)
    qt = rng.choice(len(topics), n_queries)
    q = topics[qt[:, None], rng.integers(0, 8, (n_queries, q_tokens))] + 0.35 * rng.standard_normal((n_queries, q_tokens, dim))
    q = (q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)
    return docs, q


def make_hard_data(n_docs: int, tokens: int, dim: int, n_queries: int, q_tokens: int, n_centres: int = 2000,
                   noise: float = 1.0, seed: int = 0):
    """Tokens around ``n_centres`` shared centres with heavy noise (noise norm ~ ``noise`` x the centre's);
    a query = half its tokens noisy copies of one document's tokens, half random tokens."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    centres = unit(rng.standard_normal((n_centres, dim)))
    docs = unit(centres[rng.integers(0, n_centres, (n_docs, tokens))]
                + noise / np.sqrt(dim) * rng.standard_normal((n_docs, tokens, dim)))
    half = q_tokens // 2
    src = rng.integers(0, n_docs, n_queries)
    picked = docs[src[:, None], np.stack([rng.choice(tokens, half, replace=False) for _ in range(n_queries)])]
    noisy = unit(picked + noise / np.sqrt(dim) * rng.standard_normal(picked.shape))
    random = unit(rng.standard_normal((n_queries, q_tokens - half, dim)))
    return docs, np.concatenate([noisy, random], axis=1)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def ensure_peer() -> Path | None:
    py = PEER_VENV / "bin" / "python"
    if py.exists():
        return py
    print("creating the fast-plaid venv (its own torch; ~1-2 min)...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "fast-plaid"], check=True)
        return py
    except subprocess.CalledProcessError as e:
        print(f"fast-plaid could not be installed ({e}); peer columns left out.")
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--query-tokens", type=int, default=16)
    ap.add_argument("--nbits", default="1,2,4,8")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--data", choices=("topics", "hard"), default="topics",
                    help="topics: well-separated (every setting reaches ~1.0); hard: 2,000 shared centres, heavy noise, "
                         "queries = 8 noisy tokens of one document + 8 random tokens (use --docs 5000 --nbits 2)")
    ap.add_argument("--curve", default=None,
                    help="xmodal nprobe:ncandidates[:ninteract[:centroid_threshold]] settings for a recall-vs-latency "
                         "curve, e.g. 4:64,8:256:1024:0.4 (0 or empty = the index default; the defaults row is always run)")
    ap.add_argument("--full-vectors", action="store_true",
                    help="also store float16 token vectors in xmodal's index and run the curve re-scoring with them")
    ap.add_argument("--centroids", type=int, default=None, help="xmodal k-means centroids (default: the index rule)")
    ap.add_argument("--threads", default="",
                    help="torch threads for both engines' searches, e.g. 1,2 runs each curve once per count (rows marked "
                         "@1t/@2t); default: torch's default (OMP_NUM_THREADS); both engines build with every core")
    ap.add_argument("--peer-curve", default="8:4096",
                    help="fast-plaid n_ivf_probe:n_full_scores settings (its defaults: 8:4096)")
    args = ap.parse_args()

    make = make_hard_data if args.data == "hard" else make_data
    docs, queries = make(args.docs, args.tokens, args.dim, args.queries, args.query_tokens)
    curve = [None] + ([c.split(":") for c in args.curve.split(",")] if args.curve else [])
    peer_curve = [[int(v) for v in c.split(":")] for c in args.peer_curve.split(",")]
    t0 = time.perf_counter()
    truth = exact_maxsim_topk(list(queries), list(docs), args.k)
    print(f"{args.docs:,} docs x {args.tokens} tokens x {args.dim} dims, {args.queries} queries x {args.query_tokens} tokens; "
          f"exact MaxSim ground truth in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPU cores", flush=True)
    rows = []
    peer = None if args.no_peer else ensure_peer()
    with tempfile.TemporaryDirectory() as work:
        np.save(f"{work}/docs.npy", docs)
        np.save(f"{work}/queries.npy", queries)
        for nbits in [int(b) for b in args.nbits.split(",")]:
            index = MultiVectorIndex(args.dim, nbits=nbits, n_centroids=args.centroids, full_vectors=args.full_vectors)
            t0 = time.perf_counter()
            index.add([str(i) for i in range(len(docs))], docs)
            build = time.perf_counter() - t0
            index.search(queries[:2], args.k)  # warm-up (inverted lists are built lazily)
            saved = index.save(Path(work) / f"xmodal-{nbits}")
            disk = sum(f.stat().st_size for f in saved.iterdir())
            names = ("nprobe", "ncandidates", "ninteract", "centroid_threshold")
            defaults = {n: index.params[n] for n in names}
            print(f"  xmodal nbits={nbits}: {index.params['n_centroids']} centroids, built in {build:.1f} s", flush=True)
            threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
            for full, nthreads in [(f, t) for f in ([False, True] if args.full_vectors else [False]) for t in threads]:
                index.params["full_vectors"] = full
                torch.set_num_threads(nthreads)
                for setting in curve:
                    index.params.update(defaults)
                    for name, v in zip(names, setting or []):
                        if v not in ("", "0"):
                            index.params[name] = float(v) if name == "centroid_threshold" else int(v)
                    t0 = time.perf_counter()
                    _, ids = index.search(queries, args.k)
                    lat = (time.perf_counter() - t0) / len(queries)
                    found = [[int(x) for x in row if x is not None] for row in ids]
                    label = "defaults" if setting is None else ":".join(setting)
                    label += "+fp16" if full else ""
                    label += f"@{nthreads}t" if len(threads) > 1 else ""
                    rows.append(("xmodal", nbits, label, recall(found, truth), 1000 * lat, index.bytes_per_token(),
                                 disk / index.num_tokens, build))
                    print(f"  xmodal nbits={nbits} {label}: recall@10 {rows[-1][3]:.3f}, {rows[-1][4]:.1f} ms/query", flush=True)
            index.params.update(defaults, full_vectors=args.full_vectors)
            torch.set_num_threads(threads[0])
            print(f"  xmodal nbits={nbits} done", flush=True)
            if peer is not None:
                r = subprocess.run([str(peer), "-c", PEER_SCRIPT, work, str(nbits), str(args.k), json.dumps(peer_curve),
                                    json.dumps(threads)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"  fast-plaid nbits={nbits} failed: {r.stderr[-500:]}")
                    continue
                out = json.loads(r.stdout.strip().splitlines()[-1])
                for run in out["runs"]:
                    label = "{}:{}".format(*run["setting"]) + (f"@{run['threads']}t" if len(threads) > 1 else "")
                    rows.append(("fast-plaid", nbits, label, recall(run["ids"], truth),
                                 1000 * run["latency"], float("nan"), out["bytes"] / docs.shape[0] / docs.shape[1], out["build"]))
                print(f"  fast-plaid nbits={nbits} done", flush=True)
    print(f"\n{'engine':<11}{'nbits':>6}{'setting':>22}{'recall@10':>11}{'ms/query':>10}{'B/token (codes)':>17}"
          f"{'B/token (disk)':>16}{'build s':>9}")
    for eng, nb, label, rec, ms, bpt, disk, build in rows:
        print(f"{eng:<11}{nb:>6}{label:>22}{rec:>11.3f}{ms:>10.1f}{bpt:>17.1f}{disk:>16.1f}{build:>9.1f}")
    print("\nrecall@10 against exact MaxSim top-10; B/token (disk) = whole index folder / tokens (centroids, lists included);"
          "\nsetting = xmodal nprobe:ncandidates[:ninteract[:centroid_threshold]] (+fp16: re-scored with stored float16 "
          "vectors; its B/token includes them), fast-plaid n_ivf_probe:n_full_scores; ms/query = one batched call / queries")


if __name__ == "__main__":
    main()
