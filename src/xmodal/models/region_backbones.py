"""Region-feature backbones: Faster R-CNN "bottom-up" region features + boxes as the image input.

OSCAR, UNITER, M3P and TERN never read pixels: an image is a set of detector regions, each a feature
vector (typically 2048-d) with its box. Both architectures here are plain ``Backbone`` s, so everything
that takes a backbone (``DualEncoder``, ``LateInteractionEncoder``, losses, ``Trainer``, indexes) takes them:

- ``RegionBackbone`` (two-stream, TERN-style): a text transformer (any transformers encoder, e.g. BERT)
  and a separate transformer over the regions, each pooled and projected into one embedding space.
- ``SingleStreamBackbone`` (OSCAR/UNITER-style): one BERT reads ``[CLS] text [SEP]`` followed by the
  regions (token type 1, box-geometry embedding); it also embeds each modality alone.

The models built on them (``RegionCrossEncoder``, ``build_region_model``) are in ``models.regions``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, ModelNotFoundError
from .backbones import Backbone
from .seeding import local_rng

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BOX_FEATURES = 7  # x1, y1, x2, y2, w, h, area: all relative to the image size (UNITER's 7-d geometry)


# ---------------------------------------------------------------------------------------------- inputs
def box_geometry(boxes: np.ndarray, image_w: float | None = None, image_h: float | None = None) -> np.ndarray:
    """``(r, 4)`` pixel boxes -> ``(r, 7)`` normalised geometry ``[x1, y1, x2, y2, w, h, w*h]`` in [0, 1].

    Without the image size (some feature files omit it) the furthest box corner stands in for it.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    w = float(image_w) if image_w else max(float(b[:, 2].max(initial=0.0)), 1.0)
    h = float(image_h) if image_h else max(float(b[:, 3].max(initial=0.0)), 1.0)
    x1, y1 = np.clip(b[:, 0] / w, 0, 1), np.clip(b[:, 1] / h, 0, 1)
    x2, y2 = np.clip(b[:, 2] / w, 0, 1), np.clip(b[:, 3] / h, 0, 1)
    bw, bh = np.clip(x2 - x1, 0, 1), np.clip(y2 - y1, 0, 1)
    return np.stack([x1, y1, x2, y2, bw, bh, bw * bh], axis=1).astype(np.float32)


def as_region_features(source: Any, store: Mapping[str, Any] | None) -> Any:
    """A ``RegionFeatures`` for an image id (through ``store``), a record, or a dict of its fields."""
    from ..data.features import RegionFeatures

    if isinstance(source, RegionFeatures):
        return source
    if isinstance(source, Mapping) and "regions" in source:
        return RegionFeatures(**source)
    if isinstance(source, (str, Path)):
        if store is None:
            raise InvalidInputError(
                f"'{source}' is an image id, but this region-feature model has no feature store: call "
                "model.attach_features(FeatureStore.open(PATH)) first (region models read detector features, not pixels).")
        key = str(source)
        if key not in store:
            # datasets name images by path ("images/123.jpg"); feature files by file name or bare id ("123")
            for alias in (Path(key).name, Path(key).stem):
                if alias in store:
                    return store[alias]
        return store[key]
    raise InvalidInputError(
        f"a region-feature model takes RegionFeatures or image ids, not {type(source).__name__} "
        "(it reads detector features, not pixels; see xmodal.data.features.extract_features).")


def collate_regions(records: Sequence[Any], max_regions: int) -> dict[str, torch.Tensor]:
    """Pad region sets to the longest in the batch: ``regions (n, r, d)``, ``geometry (n, r, 7)``, ``region_mask (n, r)``.

    Sets longer than ``max_regions`` keep their first ``max_regions`` (detectors emit regions by confidence).
    """
    if not records:
        raise InvalidInputError("no images to encode.")
    dim = records[0].regions.shape[1]
    r = max(1, min(max_regions, max(x.regions.shape[0] for x in records)))
    regions = torch.zeros(len(records), r, dim)
    geometry = torch.zeros(len(records), r, BOX_FEATURES)
    mask = torch.zeros(len(records), r, dtype=torch.long)
    for i, x in enumerate(records):
        if x.regions.shape[1] != dim:
            raise InvalidInputError(f"region features of one batch differ in size: {x.regions.shape[1]} vs {dim}.")
        n = min(r, x.regions.shape[0])
        regions[i, :n] = torch.from_numpy(np.ascontiguousarray(x.regions[:n], dtype=np.float32))
        geometry[i, :n] = torch.from_numpy(box_geometry(x.boxes[:n], x.image_w, x.image_h))
        mask[i, :n] = 1
    return {"regions": regions, "geometry": geometry, "region_mask": mask}


class RegionEmbedding(nn.Module):
    """Feature + box geometry -> hidden (UNITER: LayerNorm(W_f f) + LayerNorm(W_b g), then LayerNorm)."""

    def __init__(self, region_dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.feature = nn.Linear(region_dim, hidden)
        self.feature_norm = nn.LayerNorm(hidden)
        self.box = nn.Linear(BOX_FEATURES, hidden)
        self.box_norm = nn.LayerNorm(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, regions: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        x = self.feature_norm(self.feature(regions)) + self.box_norm(self.box(geometry))
        return self.dropout(self.norm(x))


# ---------------------------------------------------------------------------------------------- config
@dataclass
class RegionModelConfig:
    """What a region model is made of; saved as ``config.json`` beside ``model.safetensors``.

    ``text_config`` is the transformers config dict of the text encoder (BERT for the single stream).
    """

    architecture: str = "two-stream"  # "two-stream" (TERN) or "single-stream" (OSCAR/UNITER)
    region_dim: int = 2048
    hidden: int = 768  # region transformer width (two-stream); the single stream uses the BERT width
    layers: int = 4  # region transformer depth (two-stream)
    heads: int = 8
    max_regions: int = 100
    max_text_length: int = 64
    projection_dim: int = 512
    dropout: float = 0.1
    text_config: dict[str, Any] = field(default_factory=dict)
    model_type: str = "xmodal_regions"

    def save(self, folder: Path) -> None:
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "RegionModelConfig":
        data = json.loads((folder / CONFIG_FILE).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _text_model_from_config(text_config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    cfg = dict(text_config)
    model_type = cfg.pop("model_type", "bert")
    return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg), add_pooling_layer=False)



# ---------------------------------------------------------------------------------------------- backbones
class _RegionInputs(Backbone):
    """Shared by both region backbones: tokenizing, region batches, the feature store, saving."""

    def __init__(self, config: RegionModelConfig, text_model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__()
        self.config = config
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.name = name
        self.features: Mapping[str, Any] | None = None  # a FeatureStore; not saved with the weights

    def load_image(self, source: Any) -> Any:
        return as_region_features(source, self.features)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_text_length,
                             return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def preprocess(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        records = [self.load_image(x) for x in images]
        if records[0].regions.shape[1] != self.config.region_dim:
            raise InvalidInputError(f"region features are {records[0].regions.shape[1]}-d but the model expects "
                                    f"{self.config.region_dim}-d (config.region_dim); wrong feature file for this model?")
        return collate_regions(records, self.config.max_regions)

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    @property
    def state_dims(self) -> tuple[int, int]:
        return int(self.text_model.config.hidden_size), self._image_state_dim

    @property
    def _image_state_dim(self) -> int:
        return int(self.text_model.config.hidden_size)  # the single stream: regions live in the BERT width

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_model

        self.config.text_config = self.text_model.config.to_dict()
        self.config.save(folder)
        save_model(self, str(folder / WEIGHTS_FILE))
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def load(cls, folder: Path, name: str | None = None) -> "_RegionInputs":
        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        config = RegionModelConfig.load(folder)
        with local_rng():  # the random init is overwritten by the weights: leave the caller's RNG alone
            backbone = cls(config, _text_model_from_config(config.text_config), AutoTokenizer.from_pretrained(folder),
                           name=name or str(folder))
        load_model(backbone, str(folder / WEIGHTS_FILE))
        return backbone.eval()


class RegionBackbone(_RegionInputs):
    """Two-stream (TERN-style): a text transformer and a region transformer, pooled and projected.

    Text: the text encoder's ``[CLS]`` state. Regions: a learned ``[IMG]`` token is prepended to the
    embedded regions and a transformer encoder runs over them; the ``[IMG]`` output is the image vector.
    """

    backend = "regions"
    text_tower = ("text_model", "text_projection")
    image_tower = ("region_embed", "image_token", "region_model", "region_norm", "region_projection")

    @property
    def _image_state_dim(self) -> int:
        return self.config.hidden  # the region transformer's width

    def __init__(self, config: RegionModelConfig, text_model: nn.Module, tokenizer: Any, name: str = "region-dual") -> None:
        super().__init__(config, text_model, tokenizer, name)
        h = config.hidden
        self.region_embed = RegionEmbedding(config.region_dim, h, config.dropout)
        self.image_token = nn.Parameter(torch.zeros(1, 1, h))
        nn.init.normal_(self.image_token, std=0.02)
        self.region_model = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(h, config.heads, dim_feedforward=4 * h, dropout=config.dropout,
                                       batch_first=True, norm_first=True),
            config.layers, enable_nested_tensor=False)
        self.region_norm = nn.LayerNorm(h)
        self.text_projection = nn.Linear(int(text_model.config.hidden_size), config.projection_dim, bias=False)
        self.region_projection = nn.Linear(h, config.projection_dim, bias=False)

    def text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_model(**batch).last_hidden_state, batch["attention_mask"]

    def image_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[IMG]`` + region states ``(n, 1 + r, hidden)`` and mask."""
        x = self.region_embed(batch["regions"], batch["geometry"])
        x = torch.cat([self.image_token.expand(len(x), -1, -1).to(x.dtype), x], dim=1)
        mask = torch.cat([torch.ones_like(batch["region_mask"][:, :1]), batch["region_mask"]], dim=1)
        x = self.region_model(x, src_key_padding_mask=mask == 0)
        return self.region_norm(x), mask

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states, _ = self.text_states(batch)
        return self.text_projection(states[:, 0])

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states, _ = self.image_states(batch)
        return self.region_projection(states[:, 0])


class SingleStreamBackbone(_RegionInputs):
    """One BERT over ``[CLS] text [SEP] regions`` (OSCAR/UNITER); also embeds each modality alone.

    Regions enter after BERT's word-embedding lookup: their embedding (feature + box geometry) takes the
    place of a word embedding, they get token type 1 and one shared position slot (their position is the
    box geometry). Image-only inputs are ``[CLS]`` followed by the regions.
    """

    backend = "single-stream"
    # one BERT reads both; it counts as the text tower (the regions' own parts are their embedding + projection)
    text_tower = ("text_model", "text_projection")
    image_tower = ("region_embed", "region_projection")

    def __init__(self, config: RegionModelConfig, text_model: nn.Module, tokenizer: Any, name: str = "region-cross") -> None:
        super().__init__(config, text_model, tokenizer, name)
        h = int(text_model.config.hidden_size)
        if int(getattr(text_model.config, "type_vocab_size", 0)) < 2:
            raise InvalidInputError("the single-stream model needs a text encoder with 2 token types (BERT-like).")
        self.region_embed = RegionEmbedding(config.region_dim, h, config.dropout)
        self.match_head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, 1))
        self.text_projection = nn.Linear(h, config.projection_dim, bias=False)
        self.region_projection = nn.Linear(h, config.projection_dim, bias=False)
        self.cls_id = int(tokenizer.cls_token_id)

    def _encode(self, embeds: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.text_model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types,
                               position_ids=positions).last_hidden_state

    def _region_part(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.region_embed(batch["regions"], batch["geometry"]), batch["region_mask"]

    def _word_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.get_input_embeddings()(ids)

    def joint_states(self, text: dict[str, torch.Tensor], image: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """States of the aligned pairs read as one sequence: ``(n, t + r, h)`` and mask."""
        ids, t_mask = text["input_ids"], text["attention_mask"]
        regions, r_mask = self._region_part(image)
        words = self._word_embeddings(ids)
        embeds = torch.cat([words, regions.to(words.dtype)], dim=1)
        mask = torch.cat([t_mask, r_mask], dim=1)
        types = torch.cat([torch.zeros_like(ids), torch.ones_like(r_mask)], dim=1)
        t_pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        r_pos = torch.zeros_like(r_mask)
        return self._encode(embeds, mask, types, torch.cat([t_pos, r_pos], dim=1)), mask

    def match_logits(self, text: dict[str, torch.Tensor], image: dict[str, torch.Tensor]) -> torch.Tensor:
        states, _ = self.joint_states(text, image)
        return self.match_head(states[:, 0]).squeeze(-1)

    def text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_model(**batch).last_hidden_state, batch["attention_mask"]

    def image_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        regions, r_mask = self._region_part(batch)
        n = len(regions)
        cls = self._word_embeddings(torch.full((n, 1), self.cls_id, device=regions.device))
        embeds = torch.cat([cls, regions.to(cls.dtype)], dim=1)
        mask = torch.cat([torch.ones_like(r_mask[:, :1]), r_mask], dim=1)
        types = torch.cat([torch.zeros_like(r_mask[:, :1]), torch.ones_like(r_mask)], dim=1)
        return self._encode(embeds, mask, types, torch.zeros_like(mask)), mask

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_projection(self.text_states(batch)[0][:, 0])

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.region_projection(self.image_states(batch)[0][:, 0])


BACKBONES: dict[str, type[_RegionInputs]] = {"regions": RegionBackbone, "single-stream": SingleStreamBackbone}


def load_region_backbone(folder: Path, backend: str, name: str | None = None) -> _RegionInputs:
    if backend not in BACKBONES:
        raise ModelNotFoundError(f"'{folder}' holds a region model of unknown type '{backend}' ({sorted(BACKBONES)}).")
    return BACKBONES[backend].load(folder, name=name)
