"""Retrieve fast, rerank smart: cost and quality of cross-encoder-over-all vs retrieve + rerank.

Part 1 (cost): for N items, one text query. "rerank-all" scores all N (query, item) pairs with the
cross-encoder head; "retrieve+rerank@d" searches the FAISS index and scores d pairs (median of
--repeats runs). Pair evaluations are counted exactly; wall time of rerank-all is measured for
N <= --measure-max and extrapolated linearly (pairs x measured seconds/pair) above it, marked "~".
Part 2 (quality): a tiny joint model (one set of weights for both roles) trained with the joint
loss (InfoNCE + ITM with hard negatives) on the synthetic benchmark, evaluated as retrieve-only,
rerank-all and retrieve+rerank at several depths.

    python benchmarks/rerank_speed.py
    python benchmarks/rerank_speed.py --sizes 1000,5000 --steps 300
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from xmodal import FaissIndex
from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.evaluation import RetrievalEvaluator, format_table
from xmodal.losses import JointLoss
from xmodal.models.joint import JointModel
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer


def cost_table(model: JointModel, pool: list, sizes: list[int], depths: list[int], measure_max: int,
               repeats: int = 5) -> None:
    query = "a big red circle"
    rate = None
    print(f"\n{'N':>7} {'method':<20} {'pair evals':>11} {'seconds':>9} {'speed-up':>9}")
    for n in sizes:
        rng = np.random.default_rng(n)
        vecs = model.encode_image(pool, show_progress=False)
        index = FaissIndex(vecs.shape[1])
        # N items: real image embeddings (pool) plus small noise so every item is distinct
        idx = np.arange(n) % len(pool)
        items = vecs[idx] + 0.01 * rng.standard_normal((n, vecs.shape[1])).astype(np.float32)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        index.add([str(i) for i in range(n)], items)
        if n <= measure_max:
            t0 = time.perf_counter()
            model.score([query] * n, [pool[i] for i in idx], batch_size=256, show_progress=False)
            full = time.perf_counter() - t0
            rate = full / n
            full_s = f"{full:9.2f}"
        else:
            full = rate * n
            full_s = f"~{full:8.2f}"
        print(f"{n:>7} {'rerank-all':<20} {n:>11,} {full_s} {'1.0x':>9}")
        q = model.encode_text([query])
        for d in depths:
            times = []
            for _ in range(repeats):  # a few ms each: take the median, the machine may be shared
                t0 = time.perf_counter()
                _, ids = index.search(q, d)
                cands = [pool[int(i) % len(pool)] for i in ids[0]]
                model.score([query] * d, cands, batch_size=256, show_progress=False)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            print(f"{n:>7} {f'retrieve+rerank@{d}':<20} {d:>11,} {t:9.3f} {full / t:>8.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000,25000")
    ap.add_argument("--depths", default="10,20,50")
    ap.add_argument("--measure-max", type=int, default=5000, help="largest N whose rerank-all is timed in full")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=5, help="retrieve+rerank timings: median of this many runs")
    args = ap.parse_args()
    splits = generate(n_train=3000, n_val=100, n_test=150, n_unseen=10, seed=0)
    dual = build_tiny_model("clip", None, extra_texts=all_caption_texts(splits), hidden=64, projection_dim=64)
    model = JointModel.from_dual(dual, hidden=64, layers=2, heads=4)
    t0 = time.perf_counter()
    cfg = TrainConfig(output_dir="/tmp/xmodal-rerank-bench", max_steps=args.steps, batch_size=64, lr=2e-3,
                      warmup_steps=30, checkpoint_every=10**9)
    Trainer(model, JointLoss(model), splits["train"], cfg).train(resume=False, show_progress=False)
    print(f"joint model (tiny CLIP towers + 2-layer fusion head, shared weights) trained {args.steps} steps "
          f"with InfoNCE + ITM/hard negatives in {time.perf_counter() - t0:.0f} s")
    pool = list(splits["test"].images.values())
    cost_table(model, pool, [int(s) for s in args.sizes.split(",")], [int(d) for d in args.depths.split(",")],
               args.measure_max, args.repeats)
    ev = RetrievalEvaluator(splits["test"])
    results = {"retrieve": ev(model), "rerank-all": ev(None, reranker=model)}
    for d in (5, 10, 20):
        results[f"retrieve+rerank@{d}"] = ev(model, reranker=model, depth=d)
    print(f"\nquality on the synthetic test split ({len(splits['test'].images)} images, {len(splits['test'].captions)} captions):")
    print(format_table(results))


if __name__ == "__main__":
    main()
