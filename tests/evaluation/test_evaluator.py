"""RetrievalEvaluator: both directions, several captions per image, rerank modes, chunking."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xmodal.data.types import Caption, ImageTextDataset
from xmodal.errors import InvalidInputError
from xmodal.evaluation import RetrievalEvaluator, format_table
from xmodal.evaluation.metrics import first_hit_ranks


class TableModel:
    """An 'encoder' with fixed embeddings per text / image id, so expected metrics are computable by hand."""

    def __init__(self, text_vecs: dict, image_vecs: dict):
        self.t, self.i = text_vecs, image_vecs

    def encode_text(self, texts, **kw):
        return np.stack([self.t[t] for t in texts])

    def encode_image(self, images, **kw):
        return np.stack([self.i[im] for im in images])


def make_problem(seed=0, n_images=30, per_image=3, dim=8):
    rng = np.random.default_rng(seed)
    images = {f"img{j}": f"img{j}" for j in range(n_images)}  # sources are keys into TableModel
    img_vecs = {f"img{j}": rng.standard_normal(dim) for j in range(n_images)}
    caps, txt_vecs = [], {}
    for j in range(n_images):
        for c in range(per_image):
            text = f"caption {c} of {j}"
            caps.append(Caption(text, f"img{j}"))
            txt_vecs[text] = img_vecs[f"img{j}"] + 1.6 * rng.standard_normal(dim)  # noisy: not all hits
    return ImageTextDataset(images, caps), TableModel(txt_vecs, img_vecs)


def reference_metrics(ds, model):
    txt = model.encode_text([c.text for c in ds.captions])
    img = model.encode_image(list(ds.images))
    ids = list(ds.images)
    s = txt @ img.T
    t_pos = np.array([[ids[j] == c.image_id for j in range(len(ids))] for c in ds.captions])
    r_t = first_hit_ranks(s, t_pos)
    r_i = first_hit_ranks(s.T, t_pos.T)
    return {f"t2i_R@{k}": 100 * np.mean(r_t < k) for k in (1, 5, 10)} | {f"i2t_R@{k}": 100 * np.mean(r_i < k) for k in (1, 5, 10)}


def test_metrics_equal_direct_computation_and_chunking_does_not_matter():
    ds, model = make_problem()
    expected = reference_metrics(ds, model)
    for chunk in (7, 1000):
        got = RetrievalEvaluator(ds, chunk_size=chunk)(model)
        for k, v in expected.items():
            assert got[k] == pytest.approx(v)
        assert got["mean_recall"] == pytest.approx(np.mean(list(expected.values())))
    assert 0 < got["t2i_R@1"] < 100  # the problem is neither trivial nor hopeless
    assert RetrievalEvaluator(ds).primary_metric in got


class OracleReranker:
    """Knows the truth: scores 1 for a matching pair, 0 otherwise."""

    def __init__(self, ds):
        self.truth = {(c.text, c.image_id) for c in ds.captions}
        self.calls = 0

    def score(self, queries, candidates, batch_size=32):
        self.calls += len(queries)
        out = []
        for q, c in zip(queries, candidates):
            text, img = (q, c) if isinstance(q, str) else (c, q)
            out.append(float((text, img.info["id"]) in self.truth))
        return np.array(out, dtype=np.float32)


@pytest.fixture()
def image_dataset(tmp_path):
    """Same problem, but with real image files (rerankers read pixels); ids carried in PNG text chunks."""
    from PIL.PngImagePlugin import PngInfo

    ds, model = make_problem(n_images=12, per_image=2)
    images = {}
    for iid in ds.images:
        info = PngInfo()
        info.add_text("id", iid)
        Image.new("RGB", (8, 8)).save(tmp_path / f"{iid}.png", pnginfo=info)
        images[iid] = tmp_path / f"{iid}.png"
    model.i = {str(tmp_path / f"{k}.png"): v for k, v in model.i.items()} | {tmp_path / f"{k}.png": v for k, v in model.i.items()}
    return ImageTextDataset(images, ds.captions), model


def test_rerank_modes(image_dataset):
    ds, model = image_dataset
    ev = RetrievalEvaluator(ds)
    base = ev(model)
    oracle = OracleReranker(ds)
    full = ev(None, reranker=oracle)
    assert full["t2i_R@1"] == 100 and full["i2t_R@1"] == 100
    assert oracle.calls == len(ds.captions) * len(ds.images)  # every pair once
    depth = 3
    oracle.calls = 0
    rr = ev(model, reranker=oracle, depth=depth)
    # with an oracle, a query hits at rank 1 exactly when retrieval put a positive in the top `depth`
    assert rr["t2i_R@1"] == pytest.approx(base[f"t2i_R@{depth}"] if depth in (1, 5, 10) else rr["t2i_R@1"])
    assert rr["t2i_R@1"] >= base["t2i_R@1"] and rr["i2t_R@1"] >= base["i2t_R@1"]
    assert oracle.calls == depth * (len(ds.captions) + len(ds.images))
    assert "retrieve" in format_table({"retrieve": base, "retrieve+rerank": rr})
    with pytest.raises(InvalidInputError, match="depth"):
        ev(model, reranker=oracle)


def test_rerank_depth_5_equals_retrieval_recall_at_5(image_dataset):
    ds, model = image_dataset
    ev = RetrievalEvaluator(ds)
    base, rr = ev(model), ev(model, reranker=OracleReranker(ds), depth=5)
    assert rr["t2i_R@1"] == pytest.approx(base["t2i_R@5"]) and rr["i2t_R@1"] == pytest.approx(base["i2t_R@5"])


def test_empty_dataset_rejected():
    with pytest.raises(InvalidInputError):
        RetrievalEvaluator(ImageTextDataset({}, []))


def test_rerank_keeps_small_score_differences(image_dataset):
    """Reranker scores 0.01 apart must not collapse into ties (float32 near the rerank offset would)."""
    ds, model = image_dataset
    truth = {(c.text, c.image_id) for c in ds.captions}

    class CloseScores:
        def score(self, queries, candidates, batch_size=32):
            out = []
            for q, c in zip(queries, candidates):
                text, img = (q, c) if isinstance(q, str) else (c, q)
                out.append(0.51 if (text, img.info["id"]) in truth else 0.50)
            return np.array(out, dtype=np.float32)

    ev = RetrievalEvaluator(ds)
    n_images = len(ds.images)
    assert ev(model, reranker=CloseScores(), depth=n_images)["t2i_R@1"] == ev(None, reranker=CloseScores())["t2i_R@1"] == 100


def test_format_table_separates_every_header():
    m = {f"{d}_R@{k}": 12.5 for d in ("t2i", "i2t") for k in (1, 5, 10)} | {"mean_recall": 12.5, "seconds": 1.0}
    head, _, row = format_table({"a-rather-long-run-name-over-24-chars": m}).splitlines()
    assert head.split() == ["run", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10",
                            "mean_recall", "seconds"]
    assert "  mean_recall" in head and len(row.split()) == 9
