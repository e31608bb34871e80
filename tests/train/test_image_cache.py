"""Fast training data: the preprocessed image cache (hits give identical tensors, changed files are re-read),
augmentation, worker processes and the throughput entries in the history."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xmodal.data.synthetic import all_caption_texts, generate
from xmodal.data.types import Caption, ImageTextDataset
from xmodal.errors import InvalidInputError
from xmodal.losses import InfoNCELoss
from xmodal.models.tiny import build_tiny_model
from xmodal.train import TrainConfig, Trainer
from xmodal.train.data import PairCollator, PairDataset
from xmodal.train.image_cache import Augment, ImageCache, ImagePrep, fit_image


def photo_folder(tmp_path, n=6):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(48 + 4 * i, 64, 3), dtype=np.uint8)
        p = folder / f"p{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def dataset_of(paths):
    images = {f"i{n}": str(p) for n, p in enumerate(paths)}
    return ImageTextDataset(images, [Caption(f"a small red circle {n}", iid) for n, iid in enumerate(images)], split="train")


def test_cache_hit_gives_identical_tensors_and_survives_a_new_cache_object(tmp_path):
    paths = photo_folder(tmp_path)
    model = build_tiny_model("clip", None)
    cache = ImageCache(tmp_path / "cache", ImagePrep(30))
    slots = cache.ensure([str(p) for p in paths])
    collate = PairCollator(model.backbone)
    ds = dataset_of(paths)
    # the reference: decode + fit each file directly (what a miss computes), through the same collator
    ref = collate([(fit_image(Image.open(p), 30), "a", 0) for p in paths])["image"]["pixel_values"]
    first = collate([PairDataset(ds, cache, slots)[i] for i in range(len(paths))])["image"]["pixel_values"]
    again = ImageCache(tmp_path / "cache", ImagePrep(30))  # a later run: reads the index, decodes nothing
    mtime = (again.folder / "pixels.u8").stat().st_mtime_ns
    slots2 = again.ensure([str(p) for p in paths])
    assert slots2 == slots and (again.folder / "pixels.u8").stat().st_mtime_ns == mtime
    second = collate([PairDataset(ds, again, slots2)[i] for i in range(len(paths))])["image"]["pixel_values"]
    assert torch.equal(first, ref) and torch.equal(second, ref)


def test_cache_is_invalidated_when_the_file_changes_or_the_settings_differ(tmp_path):
    paths = photo_folder(tmp_path, n=3)
    cache = ImageCache(tmp_path / "cache", ImagePrep(30), compact_at=1.0)  # no compaction: unchanged slots are reused
    slots = cache.ensure([str(p) for p in paths])
    old = cache[slots[1]].copy()
    Image.new("RGB", (50, 40), (200, 10, 10)).save(paths[1])  # same name, new content
    os.utime(paths[1], ns=(1, 1))  # even with an old, different mtime the signature changes
    slots2 = cache.ensure([str(p) for p in paths])
    assert slots2[0] == slots[0] and slots2[2] == slots[2] and slots2[1] != slots[1]
    new = cache[slots2[1]]
    assert not np.array_equal(new, old) and np.abs(new.astype(int) - [200, 10, 10]).max() <= 3
    other = ImageCache(tmp_path / "cache", ImagePrep(24))  # another size: another sub-folder
    assert other.folder != cache.folder and other[other.ensure([str(paths[0])])[0]].shape == (24, 24, 3)


def test_augmentation_changes_pixels_but_keeps_the_size():
    aug = Augment("crop,flip", 30)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8))
    torch.manual_seed(0)
    outs = [np.asarray(aug(img)) for _ in range(4)]
    assert all(o.shape == (30, 30, 3) for o in outs) and any(not np.array_equal(o, np.asarray(img)) for o in outs)
    with pytest.raises(InvalidInputError, match="unknown augmentation"):
        Augment("rotate", 30)


def test_training_with_workers_cache_and_augmentation_logs_throughput(tmp_path):
    from xmodal.data.synthetic import write_synthetic
    from xmodal.data.datasets import load_dataset

    write_synthetic(tmp_path / "data", n_train=64, n_val=1, n_test=1, n_unseen=1)
    train = load_dataset(f"karpathy:{tmp_path / 'data' / 'dataset.json'}", split="train")
    model = build_tiny_model("clip", None, extra_texts=[c.text for c in train.captions])
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=16, warmup_steps=1, log_every=2,
                      num_workers=1, cache_dir=str(tmp_path / "cache"), augment="crop", checkpoint_every=100, amp="none")
    state = Trainer(model, InfoNCELoss(model), train, cfg).train(resume=False, show_progress=False)
    logged = [h for h in state.history if "samples_per_s" in h]
    assert len(logged) == 2 and all(h["samples_per_s"] > 0 and 0 <= h["data_wait"] <= 1 for h in logged)
    assert len(list((tmp_path / "cache").glob("30px-*/pixels.u8"))) == 1


def pixel_records(cache):
    return (cache.folder / cache.pixels).stat().st_size // cache.item_bytes


def test_stale_entries_are_compacted_away_when_they_pass_a_quarter(tmp_path):
    paths = [str(p) for p in photo_folder(tmp_path, n=8)]
    cache = ImageCache(tmp_path / "cache", ImagePrep(30))
    cache.ensure(paths)
    Image.new("RGB", (40, 40), (0, 200, 0)).save(paths[0])  # 1 stale of 8 (12 %): kept, the file grows
    cache.ensure(paths)
    assert pixel_records(cache) == 9 and cache.pixels == "pixels.u8"
    for p in paths[1:3]:  # 3 stale of 11 (27 %): compacted on the next fill
        Image.new("RGB", (40, 40), (0, 0, 200)).save(p)
    slots = cache.ensure(paths)
    assert pixel_records(cache) == 8 and sorted(slots) == list(range(8))
    assert not (cache.folder / "pixels.u8").exists()  # the old file is gone: the space is back
    fresh = ImageCache(tmp_path / "fresh", ImagePrep(30))
    want = fresh.ensure(paths)
    reopened = ImageCache(tmp_path / "cache", ImagePrep(30))  # a later run reads the compacted index
    assert reopened.ensure(paths) == slots
    for a, b in zip(slots, want):
        assert np.array_equal(reopened[a], fresh[b]) and np.array_equal(cache[a], fresh[b])


def test_cache_max_gb_evicts_what_this_run_does_not_need(tmp_path):
    paths = [str(p) for p in photo_folder(tmp_path, n=8)]
    item = 30 * 30 * 3
    cache = ImageCache(tmp_path / "cache", ImagePrep(30), max_bytes=6 * item)
    cache.ensure(paths[:4])  # run A
    slots = cache.ensure(paths[4:])  # run B: 4 more would make 8 > 6 records; 2 of A's (the oldest) go
    assert pixel_records(cache) == 6
    fresh = ImageCache(tmp_path / "fresh", ImagePrep(30))
    for a, b in zip(slots, fresh.ensure(paths[4:])):
        assert np.array_equal(cache[a], fresh[b])
    kept = " ".join(ImageCache(tmp_path / "cache", ImagePrep(30))._read_index())
    in_cache = [str(Path(p).resolve()) + ":" in kept for p in paths]
    assert in_cache == [False, False, True, True, True, True, True, True]  # A's two oldest were evicted
    small = ImageCache(tmp_path / "small", ImagePrep(30), max_bytes=3 * item)
    small.ensure(paths[:2])
    with pytest.raises(InvalidInputError, match="more than --cache-max-gb"):  # one run needing more than the bound
        small.ensure(paths)


def test_no_compaction_while_another_run_has_the_cache_open(tmp_path):
    paths = [str(p) for p in photo_folder(tmp_path, n=4)]
    reader = ImageCache(tmp_path / "cache", ImagePrep(30))
    slots = reader.ensure(paths)
    before = reader[slots[3]].copy()
    for p in paths[:2]:
        Image.new("RGB", (40, 40), (0, 0, 200)).save(p)  # 50 % stale
    writer = ImageCache(tmp_path / "cache", ImagePrep(30))
    writer.ensure(paths)
    assert pixel_records(writer) == 6  # the reader's slots stay valid: nothing moved
    assert np.array_equal(reader[slots[3]], before)
    reader.close()
    writer.ensure(paths)
    assert pixel_records(writer) == 4  # alone now: compacted
