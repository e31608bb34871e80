"""The model registry: one config format, kinds registered with one line, roles, no global RNG side effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xmodal.data.features import RegionFeatures
from xmodal.errors import ModelNotFoundError, XmodalError
from xmodal.models import DualEncoder, load_model
from xmodal.models.cross import CrossEncoder, load_reranker
from xmodal.models.joint import JointModel
from xmodal.models.late import LateInteractionEncoder
from xmodal.models.registry import KINDS, ModelConfig, read_config, register_kind, write_config
from xmodal.models.roles import MultiVectorEncoder, PairScorer, SingleVectorEncoder


# ---------------------------------------------------------------------------------------------- config
def test_model_config_round_trip_and_extra_keys_at_top_level(tmp_path):
    cfg = ModelConfig(kind="joint", backend="hf", model_id="m", dims={"dim": 8}, extra={"head": {"hidden": 4}})
    write_config(tmp_path, cfg)
    raw = json.loads((tmp_path / "xmodal.json").read_text())
    assert raw["head"] == {"hidden": 4} and raw["dims"] == {"dim": 8} and raw["kind"] == "joint"
    assert read_config(tmp_path) == cfg


def test_read_config_reads_folders_saved_before_model_config(tmp_path):
    (tmp_path / "xmodal.json").write_text(json.dumps({"kind": "late", "backend": "hf", "model_id": "x", "dim": 16}))
    cfg = read_config(tmp_path)
    assert cfg.kind == "late" and cfg.dims == {"dim": 16} and cfg.extra == {}
    assert read_config(tmp_path / "nothing-here") is None and read_config("openai/clip-vit-base-patch32") is None


def test_broken_config_is_one_clear_error(tmp_path):
    (tmp_path / "xmodal.json").write_text("{not json")
    with pytest.raises(ModelNotFoundError, match="not a readable model config"):
        load_model(tmp_path)


def test_unknown_kind_names_the_known_ones(tmp_path):
    write_config(tmp_path, ModelConfig(kind="no-such-kind"))
    with pytest.raises(ModelNotFoundError, match="unknown model kind 'no-such-kind'.*dual"):
        load_model(tmp_path)


def test_built_in_kinds_are_registered():
    for kind in ("dual", "late", "joint", "cross", "region-cross"):
        load = KINDS.get(kind)
        if load is None:  # registered on first use of the registry (lazy discovery)
            from xmodal.models.registry import model_class

            load = model_class(kind)
        assert load.kind == kind


# ---------------------------------------------------------------------------------------------- a toy kind
@register_kind("toy-mean-pixel")
class ToyMeanPixelEncoder(nn.Module):
    """A toy single-vector kind: [mean red, mean green, mean blue] of the image; texts by colour word."""

    COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def __init__(self, model_id: str = "toy") -> None:
        super().__init__()
        self.model_id = model_id
        self.scale = nn.Parameter(torch.ones(1))

    @property
    def embedding_dim(self) -> int:
        return 3

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None):
        return cls(read_config(path).model_id)

    def save(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_config(folder, ModelConfig(kind=self.kind, model_id=self.model_id))

    def load_image(self, source):
        from xmodal.data.images import open_image

        return open_image(source)

    def _norm(self, x):
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def encode_text(self, texts, batch_size=64, show_progress=None, convert_to="numpy"):
        return self._norm([self.COLOURS.get(t.split()[-1], (1.0, 1.0, 1.0)) for t in texts])

    def encode_image(self, images, batch_size=32, show_progress=None, convert_to="numpy"):
        return self._norm([np.asarray(self.load_image(i), dtype=np.float32).reshape(-1, 3).mean(0) for i in images])

    def text_embeddings(self, batch):
        raise NotImplementedError

    def image_embeddings(self, batch):
        raise NotImplementedError


def test_a_toy_kind_registered_in_one_line_loads_through_load_model(tmp_path):
    from PIL import Image

    ToyMeanPixelEncoder("my-toy").save(tmp_path / "toy")
    model = load_model(tmp_path / "toy", role=SingleVectorEncoder)
    assert type(model) is ToyMeanPixelEncoder and model.model_id == "my-toy"
    sims = model.encode_text(["a red", "a blue"]) @ model.encode_image([Image.new("RGB", (4, 4), "blue")]).T
    assert sims[1, 0] > sims[0, 0]
    with pytest.raises(ModelNotFoundError, match="not a pair scorer"):
        load_model(tmp_path / "toy", role=PairScorer)


def test_registering_another_class_under_a_taken_kind_is_refused():
    with pytest.raises(XmodalError, match="already registered"):
        register_kind("dual")(ToyMeanPixelEncoder)


# ---------------------------------------------------------------------------------------------- roles
def test_roles_of_the_built_in_kinds(tiny_model, tmp_path):
    late = LateInteractionEncoder.from_dual(tiny_model, dim=8)
    joint = JointModel.from_dual(tiny_model, hidden=16, layers=1, heads=2)
    assert isinstance(tiny_model, SingleVectorEncoder) and not isinstance(tiny_model, MultiVectorEncoder)
    assert not isinstance(tiny_model, PairScorer)
    assert isinstance(late, MultiVectorEncoder) and not isinstance(late, SingleVectorEncoder)
    assert not isinstance(late, DualEncoder)  # composition: it holds the towers, it is not a dual encoder
    assert isinstance(joint, SingleVectorEncoder) and isinstance(joint, PairScorer)


def test_a_multi_vector_model_asked_for_single_vectors_says_which_index_to_use(saved_kinds):
    with pytest.raises(ModelNotFoundError, match="not a single-vector encoder.*multi-vector \\(late-interaction\\) index"):
        load_model(saved_kinds["late"], role="single-vector")


def test_load_model_refuses_a_model_of_the_wrong_role_before_loading(tiny_model_dir):
    with pytest.raises(ModelNotFoundError, match="'dual' model, not a pair scorer"):
        load_reranker(tiny_model_dir)
    with pytest.raises(ModelNotFoundError, match="not a multi-vector encoder"):
        load_model(tiny_model_dir, role=MultiVectorEncoder)


def test_joint_model_on_a_wrong_folder_is_a_one_line_xmodal_error(tiny_model_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a saved joint model \\(kind 'dual'\\)"):
        JointModel.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelNotFoundError, match="no xmodal.json"):
        JointModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- late on regions
def test_late_interaction_over_a_tiny_region_backbone_encodes(tmp_path):
    """Composition: any backbone with token/patch states works, and images go through ``backbone.load_image``."""
    from xmodal.models.regions import build_tiny_region_model

    rng = np.random.default_rng(0)
    recs = {f"img{i}": RegionFeatures(regions=rng.random((n, 64), dtype=np.float32),
                                      boxes=np.tile(np.array([[0, 0, 10, 10]], np.float32), (n, 1)), image_w=20, image_h=20)
            for i, n in enumerate([2, 5])}
    for arch in ("two-stream", "single-stream"):
        late = LateInteractionEncoder.from_dual(build_tiny_region_model(arch), dim=8).eval()
        late.attach_features(recs)  # image ids resolve through the store, like any region model
        imgs = late.encode_image(["img0", "img1"])
        assert [v.shape for v in imgs] == [(3, 8), (6, 8)]  # [IMG]/[CLS] + the real regions, padding dropped
        q = late.encode_query("a red circle", "img1")
        assert q.shape[1] == 8 and q.shape[0] > 6
        scores = late.similarity(late.encode_text(["a red circle"]), imgs)
        assert scores.shape == (1, 2) and np.isfinite(scores).all()
        late.save(tmp_path / arch)
        again = load_model(tmp_path / arch, role=MultiVectorEncoder)
        again.attach_features(recs)
        np.testing.assert_allclose(np.concatenate(again.encode_image(["img0", "img1"])), np.concatenate(imgs), atol=1e-5)


# ---------------------------------------------------------------------------------------------- no global RNG effects
@pytest.fixture(scope="module")
def saved_kinds(tmp_path_factory, tiny_model_dir):
    """One saved folder per kind: dual, late, joint, BLIP cross-encoder, region two-stream/single-stream, ColPali, FLMR."""
    from xmodal.models.regions import build_tiny_region_model
    from xmodal.models.tiny_cross import build_tiny_blip, build_tiny_joint

    root = tmp_path_factory.mktemp("kinds")
    LateInteractionEncoder.from_pretrained(tiny_model_dir, dim=8).save(root / "late")
    build_tiny_joint(root / "joint")
    build_tiny_blip(root / "blip")
    build_tiny_region_model("two-stream", root / "two-stream")
    build_tiny_region_model("single-stream", root / "single-stream")
    from xmodal.models.tiny_late import build_tiny_colpali, build_tiny_flmr

    build_tiny_colpali(root / "colpali")
    build_tiny_flmr(root / "flmr")
    return {"dual": tiny_model_dir, "late": root / "late", "joint": root / "joint", "cross": root / "blip",
            "region-dual": root / "two-stream", "region-cross": root / "single-stream",
            "colpali": root / "colpali", "flmr": root / "flmr"}


LOADERS = {
    "dual": [lambda p: load_model(p), lambda p: DualEncoder.from_pretrained(p),
             lambda p: LateInteractionEncoder.from_pretrained(p)],  # the explicit wrap of a dual folder
    "late": [lambda p: load_model(p), lambda p: LateInteractionEncoder.from_pretrained(p)],
    "joint": [lambda p: load_model(p), lambda p: JointModel.from_pretrained(p), lambda p: load_reranker(p)],
    "cross": [lambda p: load_model(p), lambda p: CrossEncoder.from_pretrained(p), lambda p: load_reranker(p)],
    "region-dual": [lambda p: load_model(p), lambda p: DualEncoder.from_pretrained(p)],
    "region-cross": [lambda p: load_model(p), lambda p: load_reranker(p)],
    "colpali": [lambda p: load_model(p)],  # pretrained late-interaction checkpoints (no xmodal.json)
    "flmr": [lambda p: load_model(p)],
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_loading_leaves_the_global_random_state_alone(kind, saved_kinds):
    for load in LOADERS[kind]:
        torch.manual_seed(1234)
        before = torch.random.get_rng_state()
        load(saved_kinds[kind])
        assert torch.equal(torch.random.get_rng_state(), before), f"{kind}: loading changed torch's RNG state"


def test_building_seeded_models_leaves_the_global_random_state_alone(tiny_model):
    from xmodal.models.regions import build_tiny_region_model
    from xmodal.models.tiny import build_tiny_model

    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    a = build_tiny_model("clip", seed=3)
    LateInteractionEncoder.from_dual(tiny_model, dim=8, seed=3)
    JointModel.from_dual(tiny_model, hidden=16, layers=1, heads=2, seed=3)
    build_tiny_region_model("single-stream", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    # and a seed still means the same weights
    b = build_tiny_model("clip", seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
