"""MUGE / Chinese-CLIP top-k prediction files and the official-style score.

Layouts (one JSON object per line; ground truth and predictions use the same field names):

| direction | ground truth | predictions (best first, exactly 10 distinct ids) |
| --- | --- | --- |
| text->image, MUGE | ``{"query_id", "query_text", "item_ids"}`` | ``{"query_id": 1, "item_ids": [...]}`` |
| text->image, Chinese-CLIP | ``{"text_id", "text", "image_ids"}`` | ``{"text_id": 1, "image_ids": [...]}`` |
| image->text, Chinese-CLIP | ``{"image_id", "text_ids"}`` (or the text->image file, inverted) | ``{"image_id": 7, "text_ids": [...]}`` |

The official scorers (Chinese-CLIP's ``cn_clip/eval/evaluation.py`` / ``evaluation_tr.py``, MUGE's) reject
a file unless every line parses, names its query and lists exactly 10 distinct ids, the ids are JSON
integers (as in the released ground truths), and every ground-truth query has a line. ``muge_score``
applies the same rules, except that it requires the id type of *this* ground truth (so a ground truth
with string ids is scored too). Score: R@K = share of queries with a ground-truth id among the top K,
in percent; mean recall = mean of R@1/5/10.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetFormatError, InvalidInputError
from ..data.chinese_clip import json_lines
from ..io import atomic_write

PRED_K = 10  # ids per query the official scorers require

# (query field, list field) of every published layout; ground truths also carry a text field
LAYOUT_KEYS = [("query_id", "item_ids"), ("text_id", "image_ids"), ("image_id", "text_ids")]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def write_muge_predictions(path: str | Path, query_ids: Sequence[Any], ranked_item_ids: Sequence[Sequence[Any]],
                           k: int = PRED_K, query_key: str = "query_id", items_key: str = "item_ids") -> Path:
    """One line per query: ``{query_key: q, items_key: [top k]}``; ids are written with the type they are given.

    Refuses (``InvalidInputError``) a query with fewer than ``k`` distinct ids or a query listed twice,
    since the official scorers would reject the whole file.
    """
    lines = []
    seen: set[Any] = set()
    for q, items in zip(query_ids, ranked_item_ids, strict=True):
        top = list(dict.fromkeys(items))[:k]
        if len(top) < k:
            raise InvalidInputError(f"query {q!r} has {len(top)} distinct ranked ids; the official scorers need exactly "
                                    f"{k} per query (is the gallery smaller than {k}?).")
        if (type(q), q) in seen:
            raise InvalidInputError(f"query {q!r} is listed twice.")
        seen.add((type(q), q))
        lines.append(json.dumps({query_key: q, items_key: top}, ensure_ascii=False) + "\n")
    return atomic_write(path, "".join(lines))  # no half-written file under the user's name


def _records(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DatasetFormatError(f"file not found: '{path}'.")
    out = []
    for n, rec in json_lines(path):
        if not isinstance(rec, dict):
            raise DatasetFormatError(f"{path}:{n}: expected a JSON object.")
        out.append((n, rec))
    if not out:
        raise DatasetFormatError(f"{path}: no records.")
    return out


def _keys_of(path: Path, rec: dict) -> tuple[str, str]:
    for qkey, lkey in LAYOUT_KEYS:
        if qkey in rec and lkey in rec:
            return qkey, lkey
    raise DatasetFormatError(f"{path}: records need one of the field pairs {LAYOUT_KEYS}; got {sorted(rec)}.")


def read_ground_truth(path: str | Path) -> tuple[tuple[str, str], dict[Any, list[Any]]]:
    """(query field, list field) and query id -> relevant ids, ids kept as the file writes them."""
    path = Path(path)
    recs = _records(path)
    keys = _keys_of(path, recs[0][1])
    gt: dict[Any, list[Any]] = {}
    for n, rec in recs:
        if keys[0] not in rec or not isinstance(rec.get(keys[1]), list):
            raise DatasetFormatError(f"{path}:{n}: needs '{keys[0]}' and a '{keys[1]}' list like the first record.")
        if rec[keys[0]] in gt:
            raise DatasetFormatError(f"{path}:{n}: {keys[0]} {rec[keys[0]]!r} appears twice.")
        gt[rec[keys[0]]] = rec[keys[1]]
    return keys, gt


def invert_ground_truth(gt: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    """text -> images becomes image -> texts (how Chinese-CLIP derives its image->text ground truth)."""
    out: dict[Any, list[Any]] = {}
    for q, items in gt.items():
        for i in items:
            out.setdefault(i, []).append(q)
    return out


def _id_type(values: Sequence[Any], what: str, path: Path) -> type:
    kinds = {int if _is_int(v) else type(v) for v in values}
    if len(kinds) != 1 or not kinds <= {int, str}:
        raise DatasetFormatError(f"{path}: {what} must all be integers or all strings; found {sorted(k.__name__ for k in kinds)}.")
    return kinds.pop()


def check_predictions(predictions: str | Path, ground_truth: str | Path, k: int = PRED_K
                      ) -> tuple[dict[Any, list[Any]], dict[Any, list[Any]]]:
    """Apply the official scorers' rules; return (ground truth, predictions) keyed by query id.

    An image->text predictions file (``image_id``/``text_ids``) may be checked against the text->image
    ground truth of Chinese-CLIP (``text_id``/``image_ids``); it is inverted first.
    """
    ppath, gpath = Path(predictions), Path(ground_truth)
    gkeys, gt = read_ground_truth(gpath)
    precs = _records(ppath)
    pkeys = _keys_of(ppath, precs[0][1])
    if pkeys != gkeys:
        if gkeys == ("text_id", "image_ids") and pkeys == ("image_id", "text_ids"):
            gt = invert_ground_truth(gt)
        else:
            raise DatasetFormatError(f"{ppath}: predictions use fields {pkeys} but the ground truth uses {gkeys}.")
    qkey, lkey = pkeys
    qtype = _id_type(list(gt), f"ground-truth {qkey}s", gpath)
    itype = _id_type([i for v in gt.values() for i in v], f"ground-truth ids in {lkey}", gpath)
    pred: dict[Any, list[Any]] = {}
    for n, rec in precs:
        where = f"{ppath}:{n}"
        if qkey not in rec or lkey not in rec:
            raise DatasetFormatError(f"{where}: needs '{qkey}' and '{lkey}'.")
        q, items = rec[qkey], rec[lkey]
        if (int if _is_int(q) else type(q)) is not qtype:
            raise DatasetFormatError(f"{where}: {qkey} {q!r} should be a {qtype.__name__} like the ground truth's.")
        if not isinstance(items, list):
            raise DatasetFormatError(f"{where}: {lkey} of {qkey} {q!r} is not a list.")
        if len(items) != k:
            raise DatasetFormatError(f"{where}: {qkey} {q!r} lists {len(items)} ids; exactly {k} are required.")
        bad = [i for i in items if (int if _is_int(i) else type(i)) is not itype]
        if bad:
            raise DatasetFormatError(f"{where}: {qkey} {q!r} lists {bad[0]!r}, which should be a {itype.__name__} "
                                     "like the ground truth's ids.")
        if len(set(items)) != k:
            raise DatasetFormatError(f"{where}: {qkey} {q!r} lists an id twice.")
        if q in pred:
            raise DatasetFormatError(f"{where}: {qkey} {q!r} appears twice.")
        pred[q] = items
    missing = [q for q in gt if q not in pred]
    if missing:
        raise DatasetFormatError(f"{ppath}: no prediction for {len(missing)} queries, e.g. {missing[:3]}.")
    return gt, pred


def muge_score(predictions: str | Path, ground_truth: str | Path, ks: Sequence[int] = (1, 5, 10),
               k: int = PRED_K) -> dict[str, float]:
    """Check a predictions file like the official scorer does, then R@K and mean recall (percent)."""
    gt, pred = check_predictions(predictions, ground_truth, k)
    hits = {kk: [] for kk in ks}
    for q, truth in gt.items():
        truth_set = set(truth)
        for kk in ks:
            hits[kk].append(bool(truth_set.intersection(pred[q][:kk])))
    out = {f"R@{kk}": float(100.0 * np.mean(v)) for kk, v in hits.items()}
    out["mean_recall"] = float(np.mean([out[f"R@{kk}"] for kk in ks]))
    return out
