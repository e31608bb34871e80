"""Dense vs lexical (BM25) vs hybrid search on the synthetic benchmark with rare tokens, in one run.

A tiny CLIP is trained briefly on the synthetic shapes benchmark (``xmodal.data.synthetic``); the test
scenes become an image collection whose items carry a catalogue text: ``"product <CODE>: <caption>"``
with a rare product code per image (``XK-4821``-style; no encoder has seen these). Two query sets,
each query with exactly one relevant image:

- ``describe``: another caption of the image (other template) -- what dense retrieval is for;
- ``code``: ``"<CODE>"`` plus the image's colour words -- the exact-term query where dense fails.

Every query runs through ``xmodal``'s own path (``build_collection(texts=...)`` -> ``Retriever.search(mode=...)``)
and R@10 (and R@1) is printed per mode and query set, with mean query latency relative to dense search.

    flock /tmp/xmodal-bench.lock python benchmarks/hybrid.py              # 1000 test images, 200 train steps
    flock /tmp/xmodal-bench.lock python benchmarks/hybrid.py --images 500 --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="test images in the collection")
    ap.add_argument("--steps", type=int, default=200, help="training steps of the tiny CLIP (batch 64)")
    ap.add_argument("--queries", type=int, default=200, help="queries per set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from xmodal.collection import build_collection, open_collection
    from xmodal.data.synthetic import all_caption_texts, generate
    from xmodal.losses import LOSSES
    from xmodal.models.tiny import build_tiny_model
    from xmodal.train import TrainConfig, Trainer

    t_start = time.perf_counter()
    splits = generate(n_train=3000, n_val=10, n_test=args.images, n_unseen=10, seed=args.seed, captions_per_image=3)
    test = splits["test"]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the tokenizer's vocabulary comes from the benchmark's captions: product codes are unknown to it
        model = build_tiny_model("clip", tmp / "model", extra_texts=all_caption_texts(splits), hidden=64,
                                 projection_dim=64, seed=args.seed)
        cfg = TrainConfig(output_dir=str(tmp / "run"), max_steps=args.steps, batch_size=64, lr=2e-3, warmup_steps=30,
                          checkpoint_every=10**9, seed=args.seed)
        t0 = time.perf_counter()
        Trainer(model, LOSSES["infonce"](model), splits["train"], cfg).train(resume=False, show_progress=False)
        train_s = time.perf_counter() - t0

        # the collection: test images on disk + a catalogue text per image with a rare product code
        images = tmp / "images"
        images.mkdir()
        caps: dict[str, list[str]] = {}
        for c in test.captions:
            caps.setdefault(c.image_id, []).append(c.text)
        codes = rng.sample(range(1000, 10000), len(test.images))
        rows, describe_q, code_q = [], [], []
        for (iid, img), code in zip(sorted(test.images.items()), codes):
            img.save(images / iid)
            own = caps[iid]
            code = f"{rng.choice('ABCDEFGHKMNPRSTXZ')}{rng.choice('ABCDEFGHKMNPRSTXZ')}-{code}"
            rows.append({"path": iid, "title": f"product {code}", "caption": own[0]})
            if len(own) > 1:
                describe_q.append((own[1], iid))
            colour_words = " ".join(w for w in own[0].split() if w in ("red", "green", "blue", "yellow", "purple",
                                                                        "orange", "white"))
            code_q.append((f"{colour_words} {code}".strip(), iid))
        texts = tmp / "catalogue.jsonl"
        texts.write_text("\n".join(json.dumps(r) for r in rows))
        t0 = time.perf_counter()
        build_collection(images, model, tmp / "idx", show_progress=False, texts=texts, text_fields=["title", "caption"])
        index_s = time.perf_counter() - t0
        retriever = open_collection(tmp / "idx").retriever(model=model)
        sets = {"describe": rng.sample(describe_q, min(args.queries, len(describe_q))),
                "code": rng.sample(code_q, min(args.queries, len(code_q)))}
        modes = [("dense", {"mode": "dense"}), ("lexical", {"mode": "lexical"}),
                 ("hybrid rrf", {"mode": "hybrid", "fusion": "rrf"}),
                 ("hybrid weighted", {"mode": "hybrid", "fusion": "weighted", "alpha": 0.5})]
        results: dict[str, dict[str, tuple[float, float]]] = {}
        latency: dict[str, float] = {}
        for name, kw in modes:
            results[name], spent, n = {}, 0.0, 0
            for set_name, queries in sets.items():
                r1 = r10 = 0
                for q, target in queries:
                    t0 = time.perf_counter()
                    ids = retriever.search(text=q, k=10, **kw).ids
                    spent += time.perf_counter() - t0
                    n += 1
                    r1 += ids[:1] == [target]
                    r10 += target in ids
                results[name][set_name] = (100 * r1 / len(queries), 100 * r10 / len(queries))
            latency[name] = 1000 * spent / n

    print(f"synthetic shapes: {args.images} test images with catalogue texts 'product <CODE>: <caption>'; tiny CLIP "
          f"trained {args.steps} steps x 64 ({train_s:.0f} s); index + BM25 build {index_s:.1f} s; "
          f"{len(sets['describe'])} describe + {len(sets['code'])} code queries; threads={args.threads}")
    head = f"{'mode':<17}{'describe R@1':>13}{'R@10':>7}{'code R@1':>10}{'R@10':>7}{'all R@10':>10}{'ms/query':>10}{'vs dense':>10}"
    print(head + "\n" + "-" * len(head))
    for name, _ in modes:
        (d1, d10), (c1, c10) = results[name]["describe"], results[name]["code"]
        n_d, n_c = len(sets["describe"]), len(sets["code"])
        all10 = (d10 * n_d + c10 * n_c) / (n_d + n_c)
        print(f"{name:<17}{d1:>13.1f}{d10:>7.1f}{c1:>10.1f}{c10:>7.1f}{all10:>10.1f}{latency[name]:>10.2f}"
              f"{latency[name] / latency['dense']:>9.2f}x")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
