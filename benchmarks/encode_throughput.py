"""Encoding throughput: one process vs Ray Data actors, on webdataset tar shards of JPEGs.

Generates a collection (``--images`` JPEGs of ``--image-size`` px in ``--shards`` tar shards), builds a
random CLIP from a config (ViT-B/32 layout, smaller: hidden 512, 8 layers, 8 heads, patch 32 at 224 px
by default, about a third of ViT-B/32's compute, so that the forward pass dominates decoding; random
weights, so only the speed is meaningful) and encodes the shards with
``xmodal.distributed.encode_collection`` three ways:

- ``local, 1 thread``: one process, torch with 1 intra-op thread (the baseline);
- ``ray, 2 actors x 1 thread``: Ray Data actor pool (``ray.init(num_cpus=2)``), one shard at a time per actor;
- ``local, 2 threads``: one process, torch with 2 intra-op threads.

Each run decodes the JPEGs, preprocesses, encodes and writes Parquet shards; the time includes
loading the model (once locally, once per actor with Ray) but not ``ray.init`` (printed separately).
Every run must produce the same ids and (within float tolerance) the same vectors.

    python benchmarks/encode_throughput.py                    # 2,000 images, about 1.5-2 minutes on 2 idle cores
    python benchmarks/encode_throughput.py --images 400       # quick check
    python benchmarks/encode_throughput.py --repeats 2        # best of two rounds, on a busy machine
    python benchmarks/encode_throughput.py --gpu-only         # the GPU rows alone (needs CUDA; no Ray needed)

GPU rows (printed when CUDA is available, or alone with ``--gpu-only``): the real ViT-B/32 layout (hidden 768,
12 layers, 12 heads, MLP 3072, patch 32 at 224 px; random weights, built from a config) loaded through
``DualEncoder.from_pretrained(..., device="cuda", dtype=...)``: images/s of the image tower on preprocessed
batches (float16 and float32, same run), and end to end through ``encode_image`` on decoded images
(CPU preprocessing included).
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def make_shards(folder: Path, n_images: int, n_shards: int, size: int, seed: int = 0) -> list[Path]:
    """Webdataset-style tars (``%06d.jpg`` members) of smooth random pictures with a few shapes, JPEG q=90."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n_images // n_shards)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for s in range(n_shards):
        path = folder / f"shard-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * per, min(n_images, (s + 1) * per)):
                a, b, c = rng.random((3, 3))
                img = np.stack([255 * (a[k] * xx + b[k] * yy + c[k]) / 3 for k in range(3)], axis=-1)
                pic = Image.fromarray(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
                draw = ImageDraw.Draw(pic)
                for _ in range(3):
                    x0, y0 = rng.integers(0, size - 40, 2)
                    draw.ellipse((x0, y0, x0 + 40, y0 + 40), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
                buf = io.BytesIO()
                pic.save(buf, format="JPEG", quality=90)
                info = tarfile.TarInfo(f"{i:06d}.jpg")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
        paths.append(path)
    return paths


def time_stages(model_dir: Path, shard: Path, n: int, threads: int) -> tuple[float, float, float]:
    """Seconds per image for JPEG decoding, preprocessing and the forward pass (1 process, ``threads`` threads)."""
    import torch

    from xmodal import DualEncoder
    from xmodal.data.images import open_image

    torch.set_num_threads(threads)
    model = DualEncoder.from_pretrained(model_dir)
    with tarfile.open(shard) as tar:
        blobs = [tar.extractfile(m).read() for m in tar.getmembers()[:n]]
    t0 = time.perf_counter()
    images = [open_image(b) for b in blobs]
    t1 = time.perf_counter()
    batch = model.backbone.preprocess(images)
    t2 = time.perf_counter()
    with torch.inference_mode():
        model.image_embeddings({k: v[:8] for k, v in batch.items()})  # warm-up
        t3 = time.perf_counter()
        for s in range(0, len(images), 32):
            model.image_embeddings({k: v[s:s + 32] for k, v in batch.items()})
        t4 = time.perf_counter()
    return (t1 - t0) / n, (t2 - t1) / n, (t4 - t3) / n


def build_vit_b32(folder: Path) -> Path:
    """A random CLIP with OpenAI ViT-B/32's image tower layout (and a small text tower), saved as a checkpoint."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from xmodal.models.backbones import HFBackbone
    from xmodal.models.dual import DualEncoder
    from xmodal.models.tiny import _image_processor, tiny_tokenizer, tiny_vocab

    vocab = tiny_vocab()
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32, num_channels=3)
    text = dict(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, pad_token_id=0, bos_token_id=vocab.index("[CLS]"),
                eos_token_id=vocab.index("[SEP]"))
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).eval()
    DualEncoder(HFBackbone(model, tiny_tokenizer(vocab, 32), _image_processor(224), name="vit-b32-layout"),
                model_id="vit-b32-layout").save(folder)
    return folder


def gpu_rows(work: Path, batch_size: int = 256, n_batches: int = 20, end_to_end_images: int = 512) -> None:
    """images/s of the ViT-B/32 layout on the GPU: float16 vs float32 (same run), plus end to end via encode_image."""
    import torch

    from xmodal import DualEncoder

    if not torch.cuda.is_available():
        print("GPU rows: not measured (no CUDA device here).")
        return
    folder = build_vit_b32(work / "vit-b32")
    name = torch.cuda.get_device_name(0)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, 224, 224, generator=g)
    rows = []
    for dtype in ("float16", "float32"):
        model = DualEncoder.from_pretrained(folder, device="cuda", dtype=dtype)
        batch = {"pixel_values": pixels.to("cuda")}
        with torch.inference_mode():
            for _ in range(3):
                model.image_embeddings(batch)  # warm-up (kernels, allocator)
            torch.cuda.synchronize()
            times = []
            for _ in range(n_batches):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model.image_embeddings(batch)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
        per_batch = sorted(times)[len(times) // 2]
        rows.append((dtype, batch_size / per_batch, per_batch * 1000))
        del model
        torch.cuda.empty_cache()
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(end_to_end_images)]
    model = DualEncoder.from_pretrained(folder, device="cuda", dtype="float16")
    model.encode_image(images[:64], batch_size=64)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.encode_image(images, batch_size=128)
    torch.cuda.synchronize()
    e2e = end_to_end_images / (time.perf_counter() - t0)
    print(f"GPU: {name}, torch {torch.__version__}; ViT-B/32 layout (768 wide, 12 layers, patch 32, 224 px), "
          f"random weights; image tower only, batch {batch_size}, median of {n_batches} batches (CUDA events)")
    print()
    print("| device | dtype | images/s (tower, preprocessed batches) | ms per batch | vs float32 |")
    print("|--------|-------|----------------------------------------|--------------|------------|")
    fp32 = rows[1][1]
    for dtype, rate, ms in rows:
        print(f"| cuda | {dtype} | {rate:,.0f} | {ms:.2f} | {rate / fp32:.2f}x |")
    print(f"| cuda | float16, end to end (encode_image on {end_to_end_images} decoded 256 px images, CPU preprocessing) "
          f"| {e2e:,.0f} | - | - |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all configurations; the best time of each is kept")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU rows (ViT-B/32 layout, float16/float32)")
    args = ap.parse_args()
    if args.gpu_only:
        with tempfile.TemporaryDirectory(prefix="xmodal-encode-gpu-") as tmp:
            gpu_rows(Path(tmp))
        return

    import logging

    import torch
    from transformers.utils import logging as hf_logging

    from xmodal.distributed import encode_collection, read_embedding_shards

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("ray").setLevel(logging.WARNING)
    from xmodal.models.tiny import build_tiny_model

    tmp = tempfile.TemporaryDirectory(prefix="xmodal-encode-bench-")
    work = args.workdir or Path(tmp.name)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    make_shards(work / "shards", args.images, args.shards, args.image_size)
    gen_s = time.perf_counter() - t0
    model_dir = work / "model"
    build_tiny_model("clip", model_dir, hidden=args.hidden, layers=args.layers, heads=args.heads,
                     image_size=args.image_size, patch_size=args.patch, projection_dim=args.hidden)
    from xmodal import DualEncoder

    vision = DualEncoder.from_pretrained(model_dir).backbone.model.vision_model
    n_params = sum(p.numel() for p in vision.parameters())
    pattern = str(work / "shards" / "shard-*.tar")

    import shutil

    import ray

    configs = [  # label, processes, threads each, engine, extra arguments
        ("local, 1 thread", 1, 1, "local", {}),
        ("ray, 2 actors x 1 thread", 2, 1, "ray", {"num_actors": 2}),
        ("local, 2 threads", 1, 2, "local", {}),
    ]
    best: dict[str, tuple[float, float]] = {}  # label -> (wall seconds, summed per-shard seconds)
    ray_init_s = 0.0
    for r in range(args.repeats):  # rounds run the configurations in turn; each keeps its best time
        for label, _, threads, engine, kw in configs:
            out = work / f"emb-{configs.index((label, _, threads, engine, kw))}"
            shutil.rmtree(out, ignore_errors=True)
            torch.set_num_threads(threads)
            if engine == "ray":
                t_ray = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
                ray.data.DataContext.get_current().enable_progress_bars = False
                ray_init_s = time.perf_counter() - t_ray
            report = encode_collection(pattern, str(model_dir), out, executor=engine, batch_size=args.batch_size,
                                       show_progress=False, **kw)
            if engine == "ray":
                ray.shutdown()
            if report.shards_failed or report.images_encoded != args.images:
                sys.exit(f"{label}: {report.summary()}")
            if report.seconds < best.get(label, (float("inf"), 0.0))[0]:
                best[label] = (report.seconds, report.shard_seconds)

    # same ids and vectors from every configuration
    outs = [work / f"emb-{i}" for i in range(len(configs))]
    ref = {i: v for ids, vecs in read_embedding_shards(outs[0]) for i, v in zip(ids, vecs)}
    max_diff = 0.0
    for out in outs[1:]:
        got = {i: v for ids, vecs in read_embedding_shards(out) for i, v in zip(ids, vecs)}
        assert got.keys() == ref.keys(), "runs produced different ids"
        max_diff = max(max_diff, max(float(np.abs(got[i] - ref[i]).max()) for i in ref))
    decode_s, prep_s, fwd_s = time_stages(model_dir, work / "shards" / "shard-00000.tar", min(256, args.images), 1)

    cmd = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"$ {cmd}")
    print(f"{args.images} JPEGs ({args.image_size} px, q=90) in {args.shards} webdataset tar shards (generated in {gen_s:.0f} s); "
          f"model: random CLIP, vision tower hidden {args.hidden}, {args.layers} layers, patch {args.patch} "
          f"({n_params / 1e6:.1f} M params) - RANDOM WEIGHTS: only the speed is meaningful")
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, ray {ray.__version__}; batch size {args.batch_size}; "
          f"ray.init took {ray_init_s:.1f} s (not counted); 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (the machine is shared: other processes add noise); "
          f"best of {args.repeats} round(s)")
    print()
    print(f"| {'engine':<26} | processes x threads | images | wall s | images/s | vs local 1 thread | "
          f"startup s | images/s after startup | vs local 1 thread |")
    print(f"|{'-' * 28}|---------------------|--------|--------|----------|-------------------|"
          f"-----------|------------------------|-------------------|")
    base = args.images / best[configs[0][0]][0]
    base_steady = args.images / best[configs[0][0]][1]
    for label, procs, threads, _, _ in configs:
        wall, shard_s = best[label]
        steady = shard_s / procs  # shards split evenly over the processes
        rate, rate_steady = args.images / wall, args.images / steady
        print(f"| {label:<26} | {f'{procs} x {threads}':>19} | {args.images:>6} | {wall:>6.1f} | {rate:>8.1f} | "
              f"{rate / base:>16.2f}x | {wall - steady:>9.1f} | {rate_steady:>22.1f} | {rate_steady / base_steady:>16.2f}x |")
    print()
    print("wall s: the whole encode_collection call (model loading; Ray: actors starting and loading the model). "
          "startup s = wall s - (sum of per-shard seconds / processes); images/s after startup = images / that.")
    print()
    print(f"per image, 1 thread: JPEG decode {decode_s * 1e3:.1f} ms, preprocessing {prep_s * 1e3:.1f} ms, "
          f"forward pass {fwd_s * 1e3:.1f} ms; same ids in every run, max |vector difference| {max_diff:.1e}")
    print()
    gpu_rows(work)
    tmp.cleanup()


if __name__ == "__main__":
    main()
