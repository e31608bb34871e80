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


def _planted_images(folder):
    """Six small, clearly different images (colour + shape) saved as PNG files."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    specs = [("red", "ellipse"), ("green", "rectangle"), ("blue", "ellipse"), ("yellow", "rectangle"),
             ("purple", "ellipse"), ("black", "rectangle")]
    paths = []
    for i, (colour, shape) in enumerate(specs):
        img = Image.new("RGB", (32, 32), colour)
        getattr(ImageDraw.Draw(img), shape)((4 + 2 * i, 6, 26, 28 - i), fill="white")
        p = folder / f"cand_{i}_{colour}.png"
        img.save(p)
        paths.append(p)
    return paths


def test_reranker_really_reorders_planted_case(tiny_model, tmp_path):
    """Issue #5: the dual encoder ranks the cross-encoder's favourite X 3rd; a real tiny joint cross-encoder puts it
    1st, and the result is exactly the depth candidates sorted by ``reranker.score`` computed by hand.

    (The tiny random BLIP is not used: its ITM scores are identical to float precision for every image, so it
    cannot define an order among images.)"""
    from pathlib import Path

    query = "a red circle"
    paths = _planted_images(tmp_path / "cands")
    xenc = build_tiny_joint(tmp_path / "joint")
    by_hand = np.asarray(xenc.score([query] * len(paths), paths), dtype=np.float32)
    assert by_hand.shape == (6,) and len(np.unique(by_hand)) == 6  # distinct scores: the order is well defined
    x = int(np.argmax(by_hand))

    # dual-encoder side: unit vectors with chosen cosines to the query's text embedding; X gets the 3rd best
    q = tiny_model.encode_text([query], show_progress=False)[0].astype(np.float64)
    q /= np.linalg.norm(q)
    rng = np.random.default_rng(0)
    others = [i for i in range(6) if i != x]
    cos = np.empty(6)
    cos[others[0]], cos[others[1]], cos[x] = 0.9, 0.8, 0.7
    cos[others[2:]] = [0.6, 0.5, 0.4]
    vecs = []
    for c in cos:
        u = rng.standard_normal(q.shape)
        u -= (u @ q) * q
        u /= np.linalg.norm(u)
        vecs.append(c * q + np.sqrt(1 - c * c) * u)
    ids = [f"item{i}" for i in range(6)]
    index = FaissIndex(tiny_model.embedding_dim)
    index.add(ids, np.asarray(vecs, dtype=np.float32), metadata=[{"path": str(p)} for p in paths])

    plain = Retriever(tiny_model, index).search(text=query, k=6)
    assert plain.stage == "retrieve"
    assert plain.ids == [ids[i] for i in np.argsort(-cos)] and plain.ids[2] == ids[x]  # X is 3rd without rerank
    np.testing.assert_allclose(plain.scores, np.sort(cos)[::-1], atol=1e-4)

    retr = Retriever(tiny_model, index, reranker=xenc, depth=6)
    res = retr.search(text=query, k=6)
    assert res.stage == "rerank" and res.ids[0] == ids[x]
    # identical to scoring the dual encoder's short list by hand (candidates resolved to image files)
    cands = [retr.resolve(i) for i in plain.ids]
    assert all(isinstance(c, Path) for c in cands) and [str(c) for c in cands] == [str(paths[int(i[4:])]) for i in plain.ids]
    hand = np.asarray(xenc.score([query] * 6, cands), dtype=np.float32)
    order = np.argsort(-hand, kind="stable")
    assert res.ids == [plain.ids[j] for j in order]
    np.testing.assert_allclose(res.scores, hand[order], atol=1e-5)
    np.testing.assert_allclose(sorted(res.scores, reverse=True), np.sort(by_hand)[::-1], atol=1e-5)
    # k < depth: the reranked top of the same short list, and rerank=False gives back the dual-encoder order
    assert retr.search(text=query, k=2).ids == res.ids[:2]
    assert retr.search(text=query, k=6, rerank=False).ids == plain.ids


class _VectorEncoder:
    embedding_dim = 4

    def encode_text(self, texts, show_progress=False):
        return np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (len(texts), 1))


def test_huge_k_is_clamped_to_the_index_and_k_must_be_an_int():
    """Issue 19 item 9: k=1_000_000_000 asked FAISS for (1, 1e9) result arrays (MemoryError)."""
    index = FaissIndex(4)
    index.add(["a", "b", "c"], np.eye(4, dtype=np.float32)[:3])
    r = Retriever(_VectorEncoder(), index)
    res = r.search(text="x", k=1_000_000_000)
    assert res.ids == ["a", "b", "c"] or sorted(res.ids) == ["a", "b", "c"]
    assert res.ids[0] == "a"
    for bad in (1.7, True, "3", 0):
        with pytest.raises(InvalidInputError, match="k must be a positive integer"):
            r.search(text="x", k=bad)


def test_retriever_places_encoder_and_reranker(tiny_model_dir, tmp_path):
    """Retriever(device=, dtype=) moves/casts the models it is given; None keeps them as they are (#14)."""
    import torch

    from xmodal import DualEncoder

    enc = DualEncoder.from_pretrained(tiny_model_dir)
    joint = build_tiny_joint(tmp_path / "joint")
    index = FaissIndex(enc.embedding_dim, model_id=enc.model_id)
    r = Retriever(enc, index, reranker=joint, dtype="bfloat16", device="cpu")
    assert r.encoder.dtype == torch.bfloat16 and next(r.reranker.parameters()).dtype == torch.bfloat16
    r = Retriever(enc, index)  # nothing asked: nothing changed
    assert r.encoder.dtype == torch.bfloat16
    with pytest.raises(InvalidInputError, match="cuda:7"):
        Retriever(enc, index, device="cuda:7")
