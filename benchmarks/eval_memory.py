"""Peak memory of RetrievalEvaluator's chunked scoring on precomputed embeddings.

    .venv/bin/python benchmarks/eval_memory.py                       # 5,000 images x 25,000 captions, d=512
    .venv/bin/python benchmarks/eval_memory.py --images 1000 --chunk 256

Random unit embeddings (5 captions per image) are made up front; ``embed`` is replaced so the
evaluator scores those arrays. tracemalloc (which sees numpy's allocations) reports the peak of the
scoring call alone (embeddings already allocated, so excluded) and the total including them.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from xmodal.data.types import Caption, ImageTextDataset
from xmodal.evaluation import RetrievalEvaluator


class PrecomputedEvaluator(RetrievalEvaluator):
    """Scores fixed arrays instead of encoding the dataset."""

    def __init__(self, dataset: ImageTextDataset, txt: np.ndarray, img: np.ndarray, **kw) -> None:
        super().__init__(dataset, **kw)
        self._txt, self._img = txt, img

    def embed(self, model):  # noqa: ARG002
        return self._txt, self._img


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=1024)
    args = ap.parse_args()
    n_i, n_t = args.images, args.images * args.per_image
    ids = [f"img{j}" for j in range(n_i)]
    ds = ImageTextDataset({i: None for i in ids}, [Caption(f"c{t}", ids[t // args.per_image]) for t in range(n_t)],
                          name="random", split="test")
    rng = np.random.default_rng(0)
    tracemalloc.start()
    img = unit(rng, n_i, args.dim)
    txt = img[np.arange(n_t) // args.per_image] + 8.0 * unit(rng, n_t, args.dim)  # captions near their image
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ev = PrecomputedEvaluator(ds, txt, img, chunk_size=args.chunk)
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    m = ev(model=object())
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    emb_mb = (txt.nbytes + img.nbytes) / 2**20
    print(f"problem: {n_i} images x {n_t} captions, d={args.dim}, chunk_size={args.chunk}")
    print(f"embeddings: {emb_mb:.1f} MB; traced before scoring: {base / 2**20:.1f} MB")
    print(f"scoring peak (above what was allocated before): {(peak - base) / 2**20:.1f} MB")
    print(f"total peak (incl. embeddings): {peak / 2**20:.1f} MB")
    print(f"wall: {wall:.1f} s; mean_recall={m['mean_recall']:.2f} t2i_R@1={m['t2i_R@1']:.2f} i2t_R@1={m['i2t_R@1']:.2f}")


if __name__ == "__main__":
    main()
