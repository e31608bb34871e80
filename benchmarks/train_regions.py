"""Region-feature models train: TERN-style two-stream and OSCAR/UNITER-style single-stream, from scratch.

Detector features cannot be downloaded here, so the synthetic benchmark's scenes are turned into
detector-style region features (``xmodal.data.synthetic.region_features``: one region per object from
its attributes + noise, its pixel box, plus clutter regions; shuffled). Prints R@1/5 both directions and
mean recall on the test split for: the two-stream model (InfoNCE), and the single-stream model trained
jointly (InfoNCE + ITM with mined hard negatives) used to retrieve, to retrieve + rerank its own top-k
(same weights), and as a cross-encoder over all pairs.

    python benchmarks/train_regions.py                 # 1000 steps each, 3000 training scenes
    python benchmarks/train_regions.py --steps 300 --n-train 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from xmodal.data.features import FeatureStore
from xmodal.data.synthetic import all_caption_texts, generate, region_features
from xmodal.evaluation import RetrievalEvaluator
from xmodal.losses import InfoNCELoss, JointLoss
from xmodal.models.regions import build_tiny_region_model
from xmodal.train import TrainConfig, Trainer


def train(model, loss, data, steps: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(output_dir=tmp, max_steps=steps, batch_size=64, lr=2e-3, warmup_steps=30,
                          checkpoint_every=10**9, seed=seed)
        t0 = time.perf_counter()
        Trainer(model, loss, data, cfg).train(resume=False, show_progress=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--region-dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: more threads only contend)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = generate(n_train=args.n_train, n_val=50, n_test=300, n_unseen=10, seed=args.seed)
    features, data = region_features(splits, dim=args.region_dim, seed=args.seed)
    store = FeatureStore.from_dict(features)
    texts = all_caption_texts(splits)
    test = RetrievalEvaluator(data["test"])
    kw = dict(region_dim=args.region_dim, hidden=64, projection_dim=64, extra_texts=texts, seed=args.seed)
    rows = []

    untrained = build_tiny_region_model("two-stream", **kw).attach_features(store)
    rows.append(("two-stream untrained", "-", 0.0, test(untrained)))
    two = build_tiny_region_model("two-stream", **kw).attach_features(store)
    secs = train(two, InfoNCELoss(two), data["train"], args.steps, args.seed)
    rows.append(("two-stream (TERN)", "infonce", secs, test(two)))

    single = build_tiny_region_model("single-stream", **kw).attach_features(store)
    secs = train(single, JointLoss(single), data["train"], args.steps, args.seed)
    rows.append(("single-stream retrieve", "joint", secs, test(single)))
    rows.append((f"single-stream rerank@{args.depth}", "joint", 0.0, test(single, reranker=single, depth=args.depth)))
    rows.append(("single-stream rerank-all", "joint", 0.0, test(None, reranker=single)))

    print("$ python " + " ".join(["benchmarks/train_regions.py", *sys.argv[1:]]))
    print(f"tiny region models (hidden 64, 2 layers), synthetic region features {args.region_dim}-d, "
          f"{args.steps} steps x batch 64, {len(data['train'].images)} train scenes, {len(data['test'].images)} test "
          f"images / {len(data['test'].captions)} captions (t2i R@1 chance {100 / len(data['test'].images):.2f} %)")
    head = f"{'model':<28}{'loss':>8}{'train s':>9}{'eval s':>8} | {'t2i R@1':>8}{'R@5':>6}{'i2t R@1':>8}{'R@5':>6}{'mR':>6}"
    print(head + "\n" + "-" * len(head))
    for name, loss, secs, m in rows:
        print(f"{name:<28}{loss:>8}{secs:>9.1f}{m['seconds']:>8.1f} | {m['t2i_R@1']:>8.1f}{m['t2i_R@5']:>6.1f}"
              f"{m['i2t_R@1']:>8.1f}{m['i2t_R@5']:>6.1f}{m['mean_recall']:>6.1f}")


if __name__ == "__main__":
    main()
