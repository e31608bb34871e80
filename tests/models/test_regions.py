"""Region-feature models (TERN two-stream, OSCAR/UNITER single-stream): loading, inputs, training, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmodal.data.features import FeatureStore, RegionFeatures
from xmodal.errors import InvalidInputError
from xmodal.models import load_model
from xmodal.models.cross import load_reranker
from xmodal.models.regions import RegionCrossEncoder, box_geometry, build_tiny_region_model


def record(rng: np.random.Generator, n: int, dim: int = 64, size: int = 100) -> RegionFeatures:
    xy = rng.uniform(0, size / 2, (n, 2))
    wh = rng.uniform(5, size / 2, (n, 2))
    return RegionFeatures(regions=rng.random((n, dim), dtype=np.float32), boxes=np.hstack([xy, xy + wh]).astype(np.float32),
                          image_w=size, image_h=size)


@pytest.fixture(scope="module")
def records() -> dict[str, RegionFeatures]:
    rng = np.random.default_rng(0)
    return {f"img{i}": record(rng, n) for i, n in enumerate([3, 7, 1, 5])}


@pytest.fixture(scope="module", params=["two-stream", "single-stream"])
def saved_model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = build_tiny_region_model(request.param, folder, seed=1)
    return request.param, folder, model


def test_box_geometry_normalises_by_image_size():
    g = box_geometry(np.array([[10, 20, 60, 100]], np.float32), image_w=100, image_h=200)
    np.testing.assert_allclose(g[0], [0.1, 0.1, 0.6, 0.5, 0.5, 0.4, 0.2], rtol=1e-6)
    # without a size the furthest corner stands in for it
    np.testing.assert_allclose(box_geometry(np.array([[0, 0, 50, 25]], np.float32))[0], [0, 0, 1, 1, 1, 1, 1])


def test_save_load_round_trip_gives_identical_embeddings(saved_model, records):
    arch, folder, model = saved_model
    fresh = build_tiny_region_model(arch, seed=1)  # same seed, never saved
    loaded = load_model(folder)
    assert type(loaded) is type(model) and loaded.backbone.backend == model.backbone.backend
    feats = list(records.values())
    for m in (model, loaded):
        np.testing.assert_allclose(m.encode_image(feats), fresh.encode_image(feats), atol=1e-6)
        np.testing.assert_allclose(m.encode_text(["a red circle", "two blue squares"]),
                                   fresh.encode_text(["a red circle", "two blue squares"]), atol=1e-6)
    emb = loaded.encode_image(feats)
    assert emb.shape == (4, loaded.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_an_embedding(saved_model, records):
    """An image encoded alone equals the same image padded in a batch with more regions (masks are right)."""
    _, _, model = saved_model
    alone = model.encode_image([records["img2"]])  # 1 region
    batched = model.encode_image([records["img1"], records["img2"]])  # padded to 7
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)


def test_region_order_does_not_matter_only_boxes_do(records):
    """Regions are a set: shuffling them (with their boxes) leaves the embedding; moving a box changes it."""
    model = build_tiny_region_model("two-stream", seed=2)
    r = records["img1"]
    perm = np.random.default_rng(1).permutation(r.num_regions)
    shuffled = RegionFeatures(r.regions[perm], r.boxes[perm], r.image_w, r.image_h)
    moved_boxes = r.boxes.copy()
    moved_boxes[0] = [0, 0, 5, 5]
    moved = RegionFeatures(r.regions, moved_boxes, r.image_w, r.image_h)
    a, b, c = model.encode_image([r, shuffled, moved])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - c).max() > 1e-4


def test_ids_resolve_through_the_attached_store(saved_model, records):
    _, _, model = saved_model
    with pytest.raises(InvalidInputError, match="attach_features"):
        build_tiny_region_model("two-stream").encode_image(["img0"])
    model.attach_features(FeatureStore.from_dict(records))
    np.testing.assert_allclose(model.encode_image(["img0", "img3"]), model.encode_image([records["img0"], records["img3"]]),
                               atol=1e-6)
    with pytest.raises(KeyError, match="nope"):
        model.encode_image(["nope"])
    with pytest.raises(InvalidInputError, match="reads detector features"):
        from PIL import Image

        model.encode_image([Image.new("RGB", (8, 8))])
    wrong_dim = RegionFeatures(np.zeros((2, 10), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(InvalidInputError, match="64-d"):
        model.encode_image([wrong_dim])


def test_pixel_models_refuse_a_feature_store(tiny_model):
    with pytest.raises(InvalidInputError, match="reads pixels"):
        tiny_model.attach_features({})


def test_single_stream_scores_pairs_jointly(tmp_path, records):
    cross = build_tiny_region_model("single-stream", tmp_path / "cross", seed=3)
    cross.attach_features(FeatureStore.from_dict(records))
    texts = ["a red circle", "a blue square", "a green cross"]
    ids = ["img0", "img1", "img3"]
    scores = cross.score(texts, [records[i] for i in ids])
    with torch.no_grad():
        by_hand = cross.match_logits(cross.backbone.tokenize(texts), cross.backbone.preprocess(ids)).numpy()
    np.testing.assert_allclose(scores, by_hand, atol=1e-5)
    # the pair is read jointly: the same image scores differently with different texts, and vice versa
    assert np.ptp(cross.score(texts, [records["img0"]] * 3)) > 1e-4
    ranked = cross.rank("a red circle", [records[i] for i in ids])
    assert sorted(i for i, _ in ranked) == [0, 1, 2] and ranked[0][1] >= ranked[-1][1]
    reloaded = load_reranker(tmp_path / "cross")
    assert isinstance(reloaded, RegionCrossEncoder)
    np.testing.assert_allclose(reloaded.score(texts, [records[i] for i in ids]), scores, atol=1e-5)
