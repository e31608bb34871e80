from __future__ import annotations

import json

import pytest

from xmodal.errors import DatasetFormatError
from xmodal.evaluation import muge_score, write_muge_predictions


def test_muge_score_semantics(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("\n".join(json.dumps({"query_id": q, "query_text": "t", "item_ids": items})
                            for q, items in [(1, [10]), (2, [20, 21]), (3, [30])]))
    ranked = {1: [10] + list(range(100, 109)), 2: [1, 2, 3, 21] + list(range(200, 206)), 3: list(range(300, 310))}
    pred = write_muge_predictions(tmp_path / "pred.jsonl", list(ranked), list(ranked.values()))
    s = muge_score(pred, gt)
    assert s["R@1"] == pytest.approx(100 / 3) and s["R@5"] == pytest.approx(200 / 3) and s["R@10"] == pytest.approx(200 / 3)
    assert s["mean_recall"] == pytest.approx((100 / 3 + 400 / 3) / 3)


def test_muge_rejects_incomplete_or_duplicate(tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text('{"query_id": 1, "item_ids": [1]}\n{"query_id": 2, "item_ids": [2]}\n')
    ten = list(range(1, 11))
    (tmp_path / "p.jsonl").write_text(json.dumps({"query_id": 1, "item_ids": ten}) + "\n")
    with pytest.raises(DatasetFormatError, match="no prediction"):
        muge_score(tmp_path / "p.jsonl", gt)
    (tmp_path / "p.jsonl").write_text(json.dumps({"query_id": 1, "item_ids": ten[:9] + [1]}) + "\n"
                                      + json.dumps({"query_id": 2, "item_ids": ten}) + "\n")
    with pytest.raises(DatasetFormatError, match="twice"):
        muge_score(tmp_path / "p.jsonl", gt)
