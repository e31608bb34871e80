"""MUGE / Chinese-CLIP format: top-k predictions jsonl and the official-style score.

Ground truth jsonl: ``{"query_id": 1, "query_text": "...", "item_ids": [7, 9]}`` per line.
Predictions jsonl: ``{"query_id": 1, "item_ids": [9, 3, ...]}`` per line, best first (10 items).
Score: R@1/5/10 = share of queries with at least one ground-truth item among the top K
predictions; mean recall = their mean. As in the official script, every ground-truth query must
have exactly one prediction line, with unique item ids, or the file is rejected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetFormatError


def write_muge_predictions(path: str | Path, query_ids: Sequence[Any], ranked_item_ids: Sequence[Sequence[Any]],
                           k: int = 10) -> Path:
    """One line per query: ``{"query_id": q, "item_ids": [top k]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for q, items in zip(query_ids, ranked_item_ids):
            f.write(json.dumps({"query_id": q, "item_ids": list(items)[:k]}, ensure_ascii=False) + "\n")
    return path


def _read_jsonl(path: Path, need: tuple[str, ...]) -> dict[Any, dict]:
    out: dict[Any, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(f"{path}:{n}: not valid JSON ({e.msg}).") from e
            missing = [k for k in need if k not in rec]
            if missing:
                raise DatasetFormatError(f"{path}:{n}: missing field(s) {missing}.")
            if rec["query_id"] in out:
                raise DatasetFormatError(f"{path}:{n}: query_id {rec['query_id']} appears twice.")
            out[rec["query_id"]] = rec
    return out


def muge_score(predictions: str | Path, ground_truth: str | Path, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Score a MUGE predictions file against ground truth (percent)."""
    pred = _read_jsonl(Path(predictions), ("query_id", "item_ids"))
    gt = _read_jsonl(Path(ground_truth), ("query_id", "item_ids"))
    missing = [q for q in gt if q not in pred]
    if missing:
        raise DatasetFormatError(f"{predictions}: no prediction for {len(missing)} queries, e.g. {missing[:3]}.")
    hits = {k: [] for k in ks}
    for q, rec in gt.items():
        items = pred[q]["item_ids"]
        if len(set(map(str, items))) != len(items):
            raise DatasetFormatError(f"{predictions}: query {q} lists an item twice.")
        truth = set(map(str, rec["item_ids"]))
        for k in ks:
            hits[k].append(bool(truth & set(map(str, items[:k]))))
    out = {f"R@{k}": float(100.0 * np.mean(v)) for k, v in hits.items()}
    out["mean_recall"] = float(np.mean([out[f"R@{k}"] for k in ks]))
    return out
