"""Retriever: retrieve -> rerank, both directions, one result type; CLI --rerank."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xmodal import FaissIndex, Retriever
from xmodal.cli import app
from xmodal.collection import build_collection
from xmodal.errors import InvalidInputError
from xmodal.models.tiny_cross import build_tiny_joint


class RecordingReranker:
    """Scores pairs by a fixed preference (reverse alphabetical id) and records what it saw."""

    def __init__(self):
        self.seen = []

    def score(self, queries, candidates, batch_size=32):
        self.seen.append((list(queries), list(candidates)))
        return np.array([-i for i in range(len(candidates))], dtype=np.float32)[::-1]  # last candidate best


def test_retrieve_then_rerank_text_to_image(tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    from xmodal.collection import open_collection

    col = open_collection(tmp_path / "idx")
    plain = col.retriever(model=tiny_model).search(text="a red circle", k=3)
    assert plain.stage == "retrieve" and len(plain) == 3
    rr = RecordingReranker()
    res = col.retriever(model=tiny_model, reranker=rr, depth=6).search(text="a red circle", k=3)
    queries, cands = rr.seen[0]
    assert queries == ["a red circle"] * 6 and len(cands) == 6 and all(str(c).endswith(".png") for c in cands)
    deep = col.retriever(model=tiny_model).search(text="a red circle", k=6)
    assert res.stage == "rerank" and res.ids == deep.ids[::-1][:3]  # reranker reversed the top-6
    assert set(res.timings) == {"encode", "retrieve", "rerank"}
    assert col.retriever(model=tiny_model, reranker=rr).search(text="x", k=2, rerank=False).stage == "retrieve"


def test_image_to_text_with_text_index(tiny_model, image_folder):
    texts = ["a red image", "a green image", "a blue image"]
    index = FaissIndex(tiny_model.embedding_dim)
    index.add(["t0", "t1", "t2"], tiny_model.encode_text(texts), metadata=[{"text": t} for t in texts])
    rr = RecordingReranker()
    res = Retriever(tiny_model, index, reranker=rr, depth=3).search(image=image_folder / "img_00_red.png", k=2)
    assert sorted(rr.seen[0][1]) == sorted(texts) and len(res) == 2 and res.stage == "rerank"


def test_bad_queries(tiny_model):
    index = FaissIndex(tiny_model.embedding_dim)
    r = Retriever(tiny_model, index)
    with pytest.raises(InvalidInputError, match="empty"):
        r.search(text="  ")
    with pytest.raises(InvalidInputError, match="give a text"):
        r.search()
    with pytest.raises(InvalidInputError, match="no reranker"):
        r.search(text="x", rerank=True)


def test_cli_search_with_rerank(tiny_model_dir, image_folder, tmp_path):
    build_collection(image_folder, str(tiny_model_dir), tmp_path / "idx", show_progress=False)
    build_tiny_joint(tmp_path / "joint")
    r = CliRunner().invoke(app, ["search", str(tmp_path / "idx"), "a red circle", "--rerank", str(tmp_path / "joint"),
                                 "--depth", "5", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["stage"] == "rerank" and len(out["ids"]) == 3 and "rerank" in out["timings"]
