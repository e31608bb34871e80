"""Cost of the weight fingerprint (xmodal.models.fingerprint) against hashing every weight byte.

    PYTHONPATH=src python benchmarks/fingerprint_cost.py [--params 150]

Builds a random model of about --params million float32 parameters (CLIP ViT-B/32 has ~150M) and times,
side by side in one run: weights_fingerprint(model) and the peer, SHA-256 over all tensor bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
from torch import nn

from xmodal.models.fingerprint import weights_fingerprint


def full_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=150, help="millions of parameters")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    width = 1024
    n_layers = max(1, round(args.params * 1e6 / (width * width + width)))
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(n_layers)])
    n = sum(p.numel() for p in model.parameters())
    rows = []
    for name, fn in (("weights_fingerprint", weights_fingerprint), ("sha256 of all bytes (peer)", full_sha256)):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(model)
            times.append(time.perf_counter() - t0)
        rows.append((name, sorted(times)[len(times) // 2]))
    print(f"model: {n / 1e6:.0f}M float32 parameters in {n_layers} tensors pairs; median of {args.repeats}")
    print(f"{'method':32s} {'seconds':>8s} {'ratio':>6s}")
    for name, s in rows:
        print(f"{name:32s} {s:8.3f} {s / rows[1][1]:6.2f}")


if __name__ == "__main__":
    main()
