"""Prediction files the official MUGE / Chinese-CLIP scorers accept, checked by an independent scorer.

``tests/reference_scorer.py`` implements the published rules (fields, JSON integer ids, exactly 10
distinct ids, every query present); xmodal's writer and ``muge_score`` are checked against it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference_scorer as ref
from jsonl_datasets import write_split

from xmodal.data import read_chinese_clip, read_muge
from xmodal.errors import DatasetFormatError, InvalidInputError
from xmodal.evaluation import check_predictions, muge_score, write_muge_predictions, write_predictions


class TableModel:
    """A deterministic dual encoder: fixed random vectors per text / per image bytes (no ties)."""

    def __init__(self, seed: int = 0, dim: int = 8):
        self.rng, self.dim, self.memo = np.random.default_rng(seed), dim, {}

    def _vec(self, key):
        if key not in self.memo:
            self.memo[key] = self.rng.standard_normal(self.dim).astype(np.float32)
        return self.memo[key]

    def encode_text(self, texts, batch_size=64, show_progress=False):
        return np.stack([self._vec(("t", t)) for t in texts])

    def encode_image(self, images, batch_size=64, show_progress=False):
        return np.stack([self._vec(("i", bytes(i))) for i in images])


def _lines(path):
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def test_muge_integer_ids_pass_the_official_rules(tmp_path):
    """Regression (issue 21): item ids were written as strings although the ground truth holds integers."""
    texts, tsv, recs = write_split(tmp_path, "muge")
    ds = read_muge(texts, tsv)
    pred = write_predictions(tmp_path / "pred.jsonl", ds, TableModel())
    lines = _lines(pred)
    assert set(lines[0]) == {"query_id", "item_ids"}
    assert all(type(x) is int for ln in lines for x in [ln["query_id"], *ln["item_ids"]])
    reference = ref.read_reference(texts, "query_id", "item_ids")
    theirs = ref.score(reference, pred, "query_id", "item_ids")  # raises Rejected on any rule broken
    ours = muge_score(pred, texts)
    for k in (1, 5, 10):
        assert ours[f"R@{k}"] == pytest.approx(theirs[f"r{k}"])
    assert ours["mean_recall"] == pytest.approx(theirs["mean_recall"])
    assert theirs["r10"] > 0  # not a vacuous comparison: some hits exist


def test_chinese_clip_field_names_both_directions(tmp_path):
    texts, tsv, recs = write_split(tmp_path, "cnclip")
    ds = read_chinese_clip(texts, tsv)
    model = TableModel(1)
    t2i = write_predictions(tmp_path / "t2i.jsonl", ds, model)
    i2t = write_predictions(tmp_path / "i2t.jsonl", ds, model, direction="i2t")
    assert set(_lines(t2i)[0]) == {"text_id", "image_ids"} and set(_lines(i2t)[0]) == {"image_id", "text_ids"}
    reference = ref.read_reference(texts, "text_id", "image_ids")
    theirs = ref.score(reference, t2i, "text_id", "image_ids")
    ours = muge_score(t2i, texts)
    assert [ours[f"R@{k}"] for k in (1, 5, 10)] == pytest.approx([theirs[f"r{k}"] for k in (1, 5, 10)])
    # image->text: the ground truth is the text file inverted, as Chinese-CLIP's transform script does
    theirs_tr = ref.score(ref.invert(reference), i2t, "image_id", "text_ids")
    ours_tr = muge_score(i2t, texts)
    assert [ours_tr[f"R@{k}"] for k in (1, 5, 10)] == pytest.approx([theirs_tr[f"r{k}"] for k in (1, 5, 10)])
    assert len(_lines(i2t)) == 12 and len(_lines(t2i)) == 13


def test_predictions_match_the_evaluator_recall(tmp_path):
    """The written top-10 and RetrievalEvaluator agree on t2i R@1/5/10 (multi-image text included)."""
    from xmodal.evaluation import RetrievalEvaluator

    texts, tsv, _ = write_split(tmp_path, "cnclip")
    ds = read_chinese_clip(texts, tsv)
    model = TableModel(2)
    m = RetrievalEvaluator(ds)(model)
    s = muge_score(write_predictions(tmp_path / "p.jsonl", ds, model), texts)
    for k in (1, 5, 10):
        assert s[f"R@{k}"] == pytest.approx(m[f"t2i_R@{k}"])
    s_tr = muge_score(write_predictions(tmp_path / "tr.jsonl", ds, model, direction="i2t"), texts)
    for k in (1, 5, 10):
        assert s_tr[f"R@{k}"] == pytest.approx(m[f"i2t_R@{k}"])


def test_string_ids_stay_strings(tmp_path):
    texts, tsv, _ = write_split(tmp_path, "cnclip", string_ids=True)
    ds = read_chinese_clip(texts, tsv)
    pred = write_predictions(tmp_path / "p.jsonl", ds, TableModel())
    tr = write_predictions(tmp_path / "tr.jsonl", ds, TableModel(), direction="i2t")
    assert all(type(x) is str for ln in _lines(pred) for x in [ln["text_id"], *ln["image_ids"]])
    assert all(type(x) is str for ln in _lines(tr) for x in [ln["image_id"], *ln["text_ids"]])
    reference = ref.read_reference(texts, "text_id", "image_ids")
    theirs = ref.score(reference, pred, "text_id", "image_ids", id_type=str)
    assert muge_score(pred, texts)["R@5"] == pytest.approx(theirs["r5"])
    ref.score(ref.invert(reference), tr, "image_id", "text_ids", id_type=str)
    with pytest.raises(ref.Rejected):  # the official scorers know only integer ids
        ref.score(reference, pred, "text_id", "image_ids", id_type=int)


BROKEN = {
    "string ids": lambda q, items: {"query_id": q, "item_ids": [str(i) for i in items]},
    "string query id": lambda q, items: {"query_id": str(q), "item_ids": items},
    "nine ids": lambda q, items: {"query_id": q, "item_ids": items[:9]},
    "duplicate id": lambda q, items: {"query_id": q, "item_ids": items[:9] + items[:1]},
    "list is not a list": lambda q, items: {"query_id": q, "item_ids": items[0]},
    "no list field": lambda q, items: {"query_id": q},
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_muge_score_rejects_what_the_official_scorer_rejects(tmp_path, rule):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps({"query_id": q, "query_text": "t", "item_ids": [q * 10]}) + "\n" for q in (1, 2)))
    good = {q: [q * 10] + [100 + j for j in range(9)] for q in (1, 2)}
    lines = [BROKEN[rule](1, good[1]), {"query_id": 2, "item_ids": good[2]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ref.Rejected):
        ref.score(ref.read_reference(gt, "query_id", "item_ids"), tmp_path / "p.jsonl", "query_id", "item_ids")
    with pytest.raises(DatasetFormatError):
        muge_score(tmp_path / "p.jsonl", gt)


def test_missing_query_rejected_by_both(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text('{"query_id": 1, "item_ids": [1]}\n{"query_id": 2, "item_ids": [2]}\n')
    (tmp_path / "p.jsonl").write_text(json.dumps({"query_id": 1, "item_ids": list(range(10))}) + "\n")
    with pytest.raises(ref.Rejected):
        ref.score(ref.read_reference(gt, "query_id", "item_ids"), tmp_path / "p.jsonl", "query_id", "item_ids")
    with pytest.raises(DatasetFormatError, match="no prediction"):
        muge_score(tmp_path / "p.jsonl", gt)


def test_writer_refuses_what_would_be_rejected(tmp_path):
    with pytest.raises(InvalidInputError, match="exactly 10"):
        write_muge_predictions(tmp_path / "p.jsonl", [1], [[1, 2, 3, 3, 4, 5, 6, 7, 8, 9]])
    with pytest.raises(InvalidInputError, match="twice"):
        write_muge_predictions(tmp_path / "p.jsonl", [1, 1], [list(range(10))] * 2)
    assert not (tmp_path / "p.jsonl").exists()
    texts, tsv, _ = write_split(tmp_path, "cnclip")
    ds = read_chinese_clip(texts, tsv)
    small = type(ds)(dict(list(ds.images.items())[:4]), [c for c in ds.captions if c.image_id in list(ds.images)[:4]],
                     extra={"layout": ds.extra["layout"]})
    with pytest.raises(InvalidInputError, match="at least 10 images"):
        write_predictions(tmp_path / "small.jsonl", small, TableModel())


def test_check_predictions_fields_must_match(tmp_path):
    texts, tsv, _ = write_split(tmp_path, "muge")
    (tmp_path / "p.jsonl").write_text(json.dumps({"text_id": 500, "image_ids": list(range(10))}) + "\n")
    with pytest.raises(DatasetFormatError, match="fields"):
        check_predictions(tmp_path / "p.jsonl", texts)



def test_late_interaction_predictions_match_the_evaluator(tmp_path):
    """A late-interaction model (MaxSim) writes the same top 10 the evaluator ranks with, both directions."""
    from xmodal.evaluation import RetrievalEvaluator
    from xmodal.models.late import LateInteractionEncoder
    from xmodal.models.tiny import build_tiny_model

    texts, tsv, _ = write_split(tmp_path, "cnclip")
    ds = read_chinese_clip(texts, tsv)
    model = LateInteractionEncoder.from_dual(build_tiny_model("clip", extra_texts=[c.text for c in ds.captions]), dim=16)
    m = RetrievalEvaluator(ds)(model)
    t2i = muge_score(write_predictions(tmp_path / "p.jsonl", ds, model), texts)
    i2t = muge_score(write_predictions(tmp_path / "tr.jsonl", ds, model, direction="i2t"), texts)
    for k in (1, 5, 10):
        assert t2i[f"R@{k}"] == pytest.approx(m[f"t2i_R@{k}"]) and i2t[f"R@{k}"] == pytest.approx(m[f"i2t_R@{k}"])
