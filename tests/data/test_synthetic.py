"""The synthetic benchmark: determinism, held-out combinations, hard negatives, Karpathy round trip."""

from __future__ import annotations

import numpy as np

from xmodal.data import read_karpathy
from xmodal.data.synthetic import COLOURS, SHAPES, SIZES, generate, unseen_combinations, write_synthetic

SMALL = dict(n_train=60, n_val=10, n_test=10, n_unseen=20)


def test_same_seed_same_data_other_seed_differs():
    a, b, c = generate(**SMALL, seed=1), generate(**SMALL, seed=1), generate(**SMALL, seed=2)
    assert [x.text for x in a["train"].captions] == [x.text for x in b["train"].captions]
    assert np.array_equal(np.asarray(a["train"].images["train_00000.png"]), np.asarray(b["train"].images["train_00000.png"]))
    assert [x.text for x in a["train"].captions] != [x.text for x in c["train"].captions]


def test_unseen_split_holds_only_combinations_never_trained_on():
    splits = generate(**SMALL, seed=0, max_objects=4)
    held = unseen_combinations(0)
    assert 0 < len(held) < len(COLOURS) * len(SHAPES) / 2
    assert {c for c, _ in held} < set(COLOURS) or len({c for c, _ in held}) <= len(COLOURS)
    for split in ("train", "val", "test"):
        for objs in splits[split].extra["scenes"].values():
            assert all((o["colour"], o["shape"]) not in held for o in objs)
    for objs in splits["test_unseen"].extra["scenes"].values():
        assert any((o["colour"], o["shape"]) in held for o in objs)
    counts = {len(v) for v in splits["train"].extra["scenes"].values()}
    assert counts <= {1, 2, 3, 4} and len(counts) > 2


def test_hard_negatives_differ_in_exactly_one_attribute():
    splits = generate(n_train=80, n_val=1, n_test=1, n_unseen=1, seed=3, hard_negatives_per_caption=3)
    ds = splits["train"]
    vocab = set(COLOURS) | set(SHAPES) | set(SIZES) | {"left", "right", "above", "below"}
    checked = 0
    for c in ds.captions:
        for neg in ds.extra["hard_negatives"][c.caption_id]:
            pos_words = [w for w in c.text.split() if w in vocab]
            neg_words = [w for w in neg.split() if w in vocab]
            if len(pos_words) == len(neg_words):  # same template: exactly one content word changes
                assert sum(p != n for p, n in zip(pos_words, neg_words)) == 1, (c.text, neg)
                checked += 1
    assert checked > 50


def test_multilingual_captions():
    splits = generate(n_train=20, n_val=1, n_test=1, n_unseen=1, langs=("en", "de", "zh"))
    langs = {c.lang for c in splits["train"].captions}
    assert langs == {"en", "de", "zh"}
    zh = [c.text for c in splits["train"].captions if c.lang == "zh"]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in zh)


def test_written_benchmark_reads_back_as_karpathy(tmp_path):
    path = write_synthetic(tmp_path / "synth", **SMALL, seed=0, langs=("en", "de"), hard_negatives_per_caption=2)
    test = read_karpathy(path, split="test_unseen")
    assert len(test.images) == 20 and all(p.exists() for p in test.images.values())
    assert {c.lang for c in test.captions} == {"en", "de"}
    assert len(read_karpathy(path, split="train").images) == 60
