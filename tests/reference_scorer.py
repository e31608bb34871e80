"""An independent scorer written for the tests from the published rules of the official scorers.

Rules (as published in Chinese-CLIP's ``cn_clip/eval/evaluation.py`` / ``evaluation_tr.py`` and the MUGE
retrieval scorer, which share them; only the field names differ):

1. every line of the predictions file is a JSON object (a blank line is a parse error, too);
2. it holds the query field (``query_id`` / ``text_id`` / ``image_id``) and that id is a JSON integer;
3. it holds the list field (``item_ids`` / ``image_ids`` / ``text_ids``) and that is a list;
4. the list has exactly 10 entries, every one a JSON integer, no entry twice;
5. every query of the ground truth has a prediction line (extra lines are ignored);
6. R@K = share of ground-truth queries with any relevant id among the first K; mean recall = mean of
   R@1/5/10; all reported times 100.

The image->text ground truth is the text->image one inverted (image -> every text that lists it).
``id_type`` lets the tests apply rule 2/4 with ``str`` to a ground truth that writes string ids; the
official scorers know only ``int``. Deliberately shares no code with ``xmodal``.
"""

from __future__ import annotations

import json
from pathlib import Path


class Rejected(Exception):
    """The official scorer would refuse this submission."""


def _lines(path: Path) -> list[str]:
    """The file's lines as a line-by-line reader sees them (a final newline ends the last line)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def _right_type(value, id_type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, id_type)


def read_reference(path: Path, query_field: str, list_field: str) -> dict:
    ref = {}
    for line in _lines(path):
        obj = json.loads(line)
        ref[obj[query_field]] = obj[list_field]
    return ref


def invert(reference: dict) -> dict:
    out: dict = {}
    for text_id, image_ids in reference.items():
        for image_id in image_ids:
            out.setdefault(image_id, []).append(text_id)
    return out


def score(reference: dict, predictions: Path, query_field: str, list_field: str, id_type=int, k: int = 10) -> dict:
    submitted = {}
    for line in _lines(predictions):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise Rejected(f"cannot parse line {line!r}") from e
        if not isinstance(obj, dict) or query_field not in obj:
            raise Rejected(f"line without {query_field}: {line!r}")
        qid = obj[query_field]
        if not _right_type(qid, id_type):
            raise Rejected(f"{query_field} {qid!r} is not a {id_type.__name__}")
        if list_field not in obj or not isinstance(obj[list_field], list):
            raise Rejected(f"{query_field} {qid!r}: {list_field} missing or not a list")
        ids = obj[list_field]
        if len(ids) != k:
            raise Rejected(f"{query_field} {qid!r}: {len(ids)} ids instead of {k}")
        for rank, i in enumerate(ids, start=1):
            if not _right_type(i, id_type):
                raise Rejected(f"{query_field} {qid!r}: id {i!r} at rank {rank} is not a {id_type.__name__}")
        if len(set(ids)) != k:
            raise Rejected(f"{query_field} {qid!r}: duplicate ids")
        submitted[qid] = ids
    missing = [q for q in reference if q not in submitted]
    if missing:
        raise Rejected(f"no prediction for {missing}")
    hits = {1: 0, 5: 0, 10: 0}
    for qid, truth in reference.items():
        for cut in hits:
            if any(t in submitted[qid][:cut] for t in truth):
                hits[cut] += 1
    r = {cut: 100.0 * h / len(reference) for cut, h in hits.items()}
    return {"r1": r[1], "r5": r[5], "r10": r[10], "mean_recall": (r[1] + r[5] + r[10]) / 3}
