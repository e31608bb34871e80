"""Extending xmodal from outside: a toy model kind and a toy index engine defined in this test, each
registered with one line, then index -> search through the public API (``xmodal.index_folder``,
``xmodal.search``, ``xmodal.load_index``, ``xmodal.load_model``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import xmodal
from xmodal.indexes.manifest import Manifest, check_compatible, read_manifest, write_manifest
from xmodal.indexes.registry import ENGINES, EngineSpec, register, unregister
from xmodal.models.registry import KINDS, ModelConfig, read_config, register_kind, write_config


class ColourEncoder:
    """A toy single-vector model: an image is its mean colour, a text is the colour it names (PIL colour names)."""

    def __init__(self, model_id: str = "toy/colour") -> None:
        self.model_id = model_id

    @property
    def embedding_dim(self) -> int:
        return 3

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None, **kw):
        return cls(read_config(name_or_path).model_id)

    def save(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_config(folder, ModelConfig(kind=self.kind, model_id=self.model_id))

    def load_image(self, source):
        from PIL import Image

        return Image.open(source).convert("RGB")

    @staticmethod
    def _unit(rgb) -> np.ndarray:
        v = np.asarray(rgb, dtype=np.float32) / 255.0 - 0.5
        return v / max(float(np.linalg.norm(v)), 1e-6)

    def encode_image(self, images, batch_size=32, show_progress=None, convert_to="numpy"):
        return np.stack([self._unit(np.asarray(im.convert("RGB")).reshape(-1, 3).mean(0)) for im in images])

    def encode_text(self, texts, batch_size=32, show_progress=None, convert_to="numpy"):
        from PIL import ImageColor

        return np.stack([self._unit(ImageColor.getrgb(t.split()[-1])) for t in texts])

    def text_embeddings(self, batch):  # training entry points: not used here
        raise NotImplementedError

    def image_embeddings(self, batch):
        raise NotImplementedError


class ToyIndex:
    """Brute-force inner product over a numpy matrix: the whole ``Index`` protocol in ~40 lines."""

    engine = "toy"

    def __init__(self, dim: int, model_id: str | None = None) -> None:
        self.dim, self.model_id = dim, model_id
        self._ids: list[str] = []
        self._vecs = np.zeros((0, dim), dtype=np.float32)
        self._meta: dict[str, dict] = {}
        self.searches = 0

    def add(self, ids, vectors, metadata=None):
        self._ids += list(ids)
        self._vecs = np.vstack([self._vecs, np.asarray(vectors, dtype=np.float32)])
        for i, m in zip(ids, metadata or [{}] * len(ids)):
            self._meta[i] = dict(m)

    def remove(self, ids):
        drop = set(ids) & set(self._ids)
        keep = [n for n, i in enumerate(self._ids) if i not in drop]
        self._ids, self._vecs = [self._ids[n] for n in keep], self._vecs[keep]
        for i in drop:
            self._meta.pop(i, None)
        return len(drop)

    def search(self, queries, k, filter=None):
        self.searches += 1
        scores = np.asarray(queries, dtype=np.float32) @ self._vecs.T
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.array(self._ids, dtype=object)[order]

    def __len__(self):
        return len(self._ids)

    def __contains__(self, item_id):
        return item_id in self._meta

    def ids(self):
        return list(self._ids)

    def metadata(self, item_id):
        return dict(self._meta.get(item_id, {}))

    def save(self, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "vectors.npy", self._vecs)
        (path / "items.json").write_text(json.dumps({"ids": self._ids, "meta": self._meta}))
        write_manifest(path, Manifest(engine=self.engine, dimension=self.dim, count=len(self), model_id=self.model_id),
                       ["vectors.npy", "items.json"])
        return path

    @classmethod
    def load(cls, path, *, model_id=None, dimension=None, verify=True):
        path = Path(path)
        m = read_manifest(path, verify=verify)
        check_compatible(m, path, model_id=model_id, dimension=dimension)
        index = cls(m.dimension, model_id=m.model_id)
        index._vecs = np.load(path / "vectors.npy")
        items = json.loads((path / "items.json").read_text())
        index._ids, index._meta = items["ids"], items["meta"]
        return index


@pytest.fixture
def toy_model(tmp_path):
    register_kind("toy-colour")(ColourEncoder)  # the one registration line (a decorator in a module)
    folder = tmp_path / "toy-model"
    ColourEncoder().save(folder)
    yield folder
    KINDS.pop("toy-colour", None)


@pytest.fixture
def toy_engine():
    register(EngineSpec("toy", ToyIndex))  # the one registration line
    yield ENGINES["toy"]
    unregister("toy")


def test_toy_engine_index_then_search_through_the_public_api(toy_engine, tiny_model_dir, image_folder, tmp_path):
    out = tmp_path / "idx"
    report = xmodal.index_folder(image_folder, out, str(tiny_model_dir), engine="toy", show_progress=False)
    assert report.added == 12 and [f for f, _ in report.failed] == ["broken.jpg"]
    index = xmodal.load_index(out)
    assert isinstance(index, ToyIndex) and len(index) == 12
    hits = xmodal.search(out, image=image_folder / "img_03_yellow.png", k=3)
    assert hits.result.ids[0] == "img_03_yellow.png" and hits.paths[0] == str(image_folder / "img_03_yellow.png")
    # an update goes through the same engine (read back from the index folder): nothing changed, nothing re-encoded
    again = xmodal.index_folder(image_folder, out, show_progress=False)
    assert (again.added, again.removed, again.unchanged) == (0, 0, 12)


def test_toy_engine_is_refused_for_embedding_shards_and_unknown_engines_are_one_clear_error(toy_engine, tmp_path):
    from xmodal.errors import InvalidInputError
    from xmodal.indexes.registry import get_engine

    assert toy_engine.from_shards is None and toy_engine.role == "single-vector"
    with pytest.raises(InvalidInputError, match="unknown index engine 'nope'; available: .*toy"):
        get_engine("nope")


def test_toy_model_kind_and_toy_engine_index_then_search(toy_model, toy_engine, image_folder, tmp_path):
    """Both extension points at once: the model class comes from the model's own xmodal.json, the index from the engine table."""
    assert isinstance(xmodal.load_model(toy_model), ColourEncoder)
    out = tmp_path / "idx"
    report = xmodal.index_folder(image_folder, out, str(toy_model), engine="toy", show_progress=False)
    assert report.added == 12 and isinstance(xmodal.load_index(out), ToyIndex)
    for name in ("img_00_red.png", "img_03_yellow.png", "sub/img_11_cyan.png"):
        assert xmodal.search(out, image=image_folder / name, k=1).result.ids == [name]
    hits = xmodal.search(out, "a blue", k=12)  # a text query through the toy model's encode_text
    assert len(hits.result.ids) == 12 and hits.result.ids[0] == "img_02_blue.png"
