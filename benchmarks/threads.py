"""Torch intra-op threads on a shared machine: 1, 2 and xmodal's default, alone and next to a busy process.

One process builds a small random CLIP (hidden 128, 4 layers, 64 px images, patch 8) and times contrastive
training steps (forward both towers, backward, SGD; batch 32) after setting its threads the way every xmodal
command does (``xmodal.runtime.set_num_threads``: ``--threads``/``XMODAL_NUM_THREADS``, else
``default_num_threads()``, which looks at the idle CPUs at that moment). "busy" runs one extra process that
keeps one core busy (a pure-Python loop) while its cells run. Conditions and thread settings are interleaved over
``--rounds`` rounds; each cell reports the median. Ratios compare each setting with the best one of the
same condition, measured in the same run.

    python benchmarks/threads.py             # 3 rounds, about 2-4 minutes on 2 cores
    python benchmarks/threads.py --rounds 5  # steadier on a noisy machine
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = ("1", "2", "auto")  # "auto" = xmodal's default


def make_step():
    """A small random CLIP (hidden 128, 4 layers, 64 px, patch 8) and one contrastive training step on batch 32."""
    import torch

    from xmodal.models.tiny import build_tiny_model

    model = build_tiny_model("clip", hidden=128, layers=4, heads=4, image_size=64, patch_size=8, projection_dim=128)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    pixels = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = model.backbone.tokenize(["a red circle left of a blue square"] * 32)

    def step() -> None:
        img = model.image_embeddings({"pixel_values": pixels})
        txt = model.text_embeddings(tokens)
        logits = img @ txt.T * 10
        labels = torch.arange(len(img))
        loss = torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def measure(step, spec: str, steps: int, warmup: int) -> tuple[int, float]:
    """Threads chosen the way every xmodal command chooses them, then steps/s."""
    from xmodal.runtime import set_num_threads

    threads = set_num_threads(None if spec == "auto" else spec)
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return threads, steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    for var in ("XMODAL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            print(f"note: {var}={os.environ[var]} is set; the settings under test override it for torch")
    os.environ.pop("XMODAL_NUM_THREADS", None)  # "auto" must be xmodal's own default
    load_before = os.getloadavg()[0]
    step = make_step()
    cells: dict[tuple[str, bool], list[float]] = {}
    picked: dict[tuple[str, bool], list[int]] = {}
    for _ in range(args.rounds):
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                if hog is not None:
                    time.sleep(0.5)  # the busy process runs before the threads are chosen
                for spec in SETTINGS:
                    threads, rate = measure(step, spec, args.steps, args.warmup)
                    cells.setdefault((spec, busy), []).append(rate)
                    picked.setdefault((spec, busy), []).append(threads)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"$ {cmd}")
    print(f"machine: {os.cpu_count()} CPUs; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"(a shared machine: other users' processes add load in both conditions); median of {args.rounds} rounds, "
          f"{args.steps} training steps each")
    print()
    print("| threads setting | alone: threads used | alone: steps/s | vs best alone | busy: threads used | busy: steps/s | vs best busy |")
    print("|-----------------|---------------------|----------------|---------------|--------------------|---------------|--------------|")
    med = {k: statistics.median(v) for k, v in cells.items()}
    best = {b: max(med[(s, b)] for s in SETTINGS) for b in (False, True)}
    for spec in SETTINGS:
        label = {"1": "--threads 1", "2": "--threads 2", "auto": "default (auto)"}[spec]
        row = [label]
        for busy in (False, True):
            used = sorted(set(picked[(spec, busy)]))
            row += ["/".join(map(str, used)), f"{med[(spec, busy)]:.2f}", f"{med[(spec, busy)] / best[busy]:.2f}x"]
        print("| " + " | ".join(row) + " |")
    ok = all(med[("auto", b)] >= 0.9 * best[b] for b in (False, True))
    print()
    print(f"default within 10% of the best in both conditions: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
