"""One unit per metrics file (percent), and texts with several positive images (MUGE / Chinese-CLIP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal.data.types import Caption, ImageTextDataset
from xmodal.evaluation import METRIC_UNITS, RetrievalEvaluator, write_metrics
from xmodal.evaluation.metrics import summarize
from xmodal.errors import InvalidInputError


class FixedModel:
    """Texts and images embedded from fixed tables (by text / by image source)."""

    def __init__(self, text_vecs, image_vecs):
        self.t, self.i = text_vecs, image_vecs

    def encode_text(self, texts, batch_size=64, show_progress=False):
        return np.stack([self.t[t] for t in texts]).astype(np.float32)

    def encode_image(self, images, batch_size=64, show_progress=False):
        return np.stack([self.i[s] for s in images]).astype(np.float32)


def test_every_score_is_in_percent():
    """Regression (issue 21): R@K was in percent while MRR and nDCG@10 were fractions in the same dict."""
    m = summarize(np.zeros(4, dtype=np.int64), np.ones(4), "t2i")  # every first hit at rank 1
    assert m["t2i_R@1"] == m["t2i_MRR"] == m["t2i_nDCG@10"] == 100.0 and m["t2i_medR"] == 1.0
    m = summarize(np.array([1, 1]), np.full(2, 1 / np.log2(3)), "i2t")  # every first hit at rank 2
    assert m["i2t_MRR"] == pytest.approx(50.0) and m["i2t_nDCG@10"] == pytest.approx(100 / np.log2(3))


def test_metrics_file_names_its_units(tmp_path):
    path = write_metrics(tmp_path / "m.json", {"retrieve": {"t2i_R@1": 50.0, "t2i_MRR": 75.0}})
    data = json.loads(path.read_text())
    assert data["units"] == METRIC_UNITS and data["units"]["MRR"] == data["units"]["R@K"] == "percent"
    assert data["retrieve"]["t2i_MRR"] == 75.0
    with pytest.raises(InvalidInputError, match="reserved"):
        write_metrics(tmp_path / "m.json", {"units": {}})


def test_text_with_two_images_counts_either_as_a_hit():
    """Text "ab" lists images a and b; the model ranks b first. Official rule: a hit at rank 1."""
    imgs = {"a": "A", "b": "B", "c": "C"}
    caps = [Caption("ab", "a"), Caption("c", "c")]
    e = np.eye(3)
    model = FixedModel({"ab": e[1], "c": e[2]}, {"A": e[0] + 0.1 * e[2], "B": e[1], "C": e[2]})
    single = RetrievalEvaluator(ImageTextDataset(imgs, caps))(model)
    multi = RetrievalEvaluator(ImageTextDataset(imgs, caps, extra={"caption_images": [["a", "b"], ["c"]]}))(model)
    assert single["t2i_R@1"] == 50.0 and multi["t2i_R@1"] == 100.0
    # image->text: image b's positive is now text "ab" (ranked first for b); without the list, b has no text
    # and is a candidate only, not a query (it used to raise "every query needs at least one positive")
    assert multi["i2t_R@1"] == pytest.approx(100.0 * 2 / 3) and single["i2t_R@1"] == pytest.approx(50.0)


def test_multi_positive_relevance_matches_a_dense_matrix():
    rng = np.random.default_rng(0)
    n_img, n_txt = 9, 14
    imgs = {f"i{j}": f"I{j}" for j in range(n_img)}
    lists = [sorted({f"i{j}" for j in rng.choice(n_img, rng.integers(1, 4), replace=False)}) for _ in range(n_txt)]
    caps = [Caption(f"t{n}", ids[0]) for n, ids in enumerate(lists)]
    ev = RetrievalEvaluator(ImageTextDataset(imgs, caps, extra={"caption_images": lists}), chunk_size=4)
    dense = np.array([[f"i{j}" in ids for j in range(n_img)] for ids in lists])
    assert (ev._t2i_pos(0, n_txt) == dense).all() and (ev._i2t_pos(0, n_img) == dense.T).all()
    assert (ev._t2i_pos(3, 7) == dense[3:7]).all() and (ev._i2t_pos(2, 5) == dense.T[2:5]).all()
