"""Training throughput: samples/s of one small model with and without DataLoader workers and the image cache.

The synthetic scenes are rendered at photo size (default 480 px, saved as JPEG like real photo sets) and a
tiny CLIP (hidden 64, 30 px input) trains on them, so decoding + resizing dominates as it does for a small
model on real photos. Every configuration runs the same steps in one process, side by side; the cache is
filled once before the timed runs (its build time is printed separately) and then reused, as a second
epoch or a later run would. Torch uses one thread (the machine has 2 shared cores).

    python benchmarks/train_throughput.py                 # 300 scenes x 2 captions, 25 steps x batch 32
    python benchmarks/train_throughput.py --steps 50 --size 640
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from xmodal.data.datasets import load_dataset
from xmodal.data.synthetic import write_synthetic
from xmodal.losses import InfoNCELoss
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--size", type=int, default=480, help="rendered image size (px)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=-1, help="-1: one per spare core (at most 4)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from xmodal.train.trainer import resolve_workers

    workers = resolve_workers(args.workers) or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "data", n_train=args.n_train, n_val=1, n_test=1, n_unseen=1, image_size=args.size)
        for png in (root / "data" / "images").glob("*.png"):  # photo sets are JPEG files
            Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        ds_file = root / "data" / "dataset.json"
        ds_file.write_text(ds_file.read_text().replace(".png", ".jpg"))
        train = load_dataset(f"karpathy:{ds_file}", split="train")
        texts = [c.text for c in train.captions]

        def run(name: str, num_workers: int, cache: bool) -> tuple[str, float, float]:
            model = build_tiny_model("clip", None, extra_texts=texts, hidden=64, projection_dim=64, seed=0)
            cfg = TrainConfig(output_dir=str(root / f"run-{name}"), max_steps=args.steps, batch_size=args.batch_size,
                              lr=1e-3, warmup_steps=2, checkpoint_every=10**9, log_every=args.steps, amp="none",
                              num_workers=num_workers, cache_dir=str(root / "cache") if cache else None)
            trainer = Trainer(model, InfoNCELoss(model), train, cfg)
            trainer.prepare_cache()  # filled by the first cached run (timed separately below), then reused
            t0 = time.perf_counter()
            state = trainer.train(resume=False, show_progress=False)
            secs = time.perf_counter() - t0
            wait = [h["data_wait"] for h in state.history if "data_wait" in h][-1]
            return name, args.steps * args.batch_size / secs, wait

        model = build_tiny_model("clip", None, extra_texts=texts, hidden=64, projection_dim=64, seed=0)
        t0 = time.perf_counter()
        Trainer(model, InfoNCELoss(model), train, TrainConfig(output_dir=str(root / "fill"), num_workers=workers,
                                                               cache_dir=str(root / "cache"))).prepare_cache()
        fill = time.perf_counter() - t0
        rows = [run("plain (0 workers, no cache)", 0, False), run(f"{workers} worker(s), no cache", workers, False),
                run("cache, 0 workers", 0, True), run(f"cache + {workers} worker(s)", workers, True)]
    base = rows[0][1]
    print(f"tiny CLIP (hidden 64, 30 px input), {len(train.images)} JPEG scenes of {args.size}x{args.size} px, "
          f"{args.steps} steps x batch {args.batch_size}, torch threads 1, cache filled once in {fill:.1f} s "
          f"({workers} worker(s))")
    head = f"{'configuration':<30}{'samples/s':>11}{'vs plain':>10}{'data wait':>11}"
    print(head + "\n" + "-" * len(head))
    for name, sps, wait in rows:
        print(f"{name:<30}{sps:>11.1f}{sps / base:>9.2f}x{100 * wait:>10.0f}%")


if __name__ == "__main__":
    main()
