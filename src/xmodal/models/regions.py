"""Region-feature models: the OSCAR/UNITER single-stream cross-encoder and builders for new region models.

The backbones (inputs, ``RegionBackbone``, ``SingleStreamBackbone``) are in ``models.region_backbones``;
a two-stream (TERN) model is a plain ``DualEncoder`` over a ``RegionBackbone``. ``RegionCrossEncoder`` wraps
the single stream: on the pair it is a cross-encoder (a match logit from ``[CLS]``); on one modality alone
it embeds it, so the same weights serve retrieval and reranking (MMT-Retrieval's shared-weight JOIN setup).

An "image" for these models is a ``RegionFeatures`` record or an image id that the attached
``FeatureStore`` resolves: ``model.attach_features(store); model.encode_image(["id1", "id2"])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import InvalidInputError
from .cross import BatchedPairScorer
from .dual import DualEncoder
from .loading import load_text_encoder
from .region_backbones import (  # noqa: F401  (re-exported: the names users know from models.regions)
    BACKBONES,
    RegionBackbone,
    RegionEmbedding,
    RegionModelConfig,
    SingleStreamBackbone,
    _text_model_from_config,
    as_region_features,
    box_geometry,
    collate_regions,
)
from .registry import load_model, register_kind
from .seeding import local_rng


@register_kind("region-cross")
class RegionCrossEncoder(DualEncoder, BatchedPairScorer):
    """OSCAR/UNITER-style single-stream model: a cross-encoder (``score``/``rank``) whose weights also embed.

    >>> cross = load_model("runs/region-cross")                                  # doctest: +SKIP
    >>> cross.attach_features(FeatureStore.open("features.h5"))                  # doctest: +SKIP
    >>> cross.score(["a dog on a sofa"] * 2, ["img1", "img2"])                   # match logits  # doctest: +SKIP
    >>> cross.encode_image(["img1"])                                             # retrieval embeddings  # doctest: +SKIP

    Loading is ``DualEncoder.from_pretrained`` (the folder's backend picks the single-stream backbone).
    """

    def __init__(self, backbone: SingleStreamBackbone, model_id: str | None = None) -> None:
        if not isinstance(backbone, SingleStreamBackbone):
            raise InvalidInputError(f"RegionCrossEncoder needs a single-stream region backbone, not "
                                    f"{type(backbone).__name__} (is this folder a two-stream or pixel model?).")
        DualEncoder.__init__(self, backbone, model_id=model_id)

    def match_logits(self, text_batch: dict[str, torch.Tensor], image_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Match logits (n,) of aligned pairs; differentiable (ITM training)."""
        return self.backbone.match_logits(self._to_device(text_batch), self._to_device(image_batch))

    def _score_batch(self, texts: list[str], images: list[Any]) -> torch.Tensor:
        return self.match_logits(self.backbone.tokenize(texts), self.backbone.preprocess(images))


def build_region_model(architecture: str = "two-stream", *, text_model: str | None = None, region_dim: int = 2048,
                       hidden: int = 768, layers: int = 4, heads: int = 8, projection_dim: int = 512,
                       max_regions: int = 100, dropout: float = 0.1, text_config: dict[str, Any] | None = None,
                       tokenizer: Any = None, model_id: str | None = None, seed: int = 0) -> DualEncoder:
    """A new region model: ``two-stream`` -> ``DualEncoder(RegionBackbone)``, ``single-stream`` -> ``RegionCrossEncoder``.

    ``text_model``: a pretrained text encoder to start from (hub id or folder, e.g. ``bert-base-uncased``);
    otherwise a random one from ``text_config`` (a transformers config dict, BERT by default) and ``tokenizer``.
    """
    if architecture not in ("two-stream", "single-stream"):
        raise InvalidInputError(f"architecture must be 'two-stream' or 'single-stream'; got '{architecture}'.")
    if text_model is None and (tokenizer is None or text_config is None):
        raise InvalidInputError("give text_model (pretrained) or both text_config and tokenizer.")
    name = model_id or f"region-{architecture}"
    with local_rng(seed):
        if text_model is not None:
            text, tok = load_text_encoder(text_model)
        else:
            text, tok = _text_model_from_config({"model_type": "bert", **text_config}), tokenizer
        cfg = RegionModelConfig(architecture=architecture, region_dim=region_dim, hidden=hidden, layers=layers,
                                heads=heads, max_regions=max_regions, projection_dim=projection_dim, dropout=dropout,
                                text_config=text.config.to_dict())
        if architecture == "two-stream":
            return DualEncoder(RegionBackbone(cfg, text, tok, name=name), model_id=name).eval()
        return RegionCrossEncoder(SingleStreamBackbone(cfg, text, tok, name=name), model_id=name).eval()


def build_tiny_region_model(architecture: str = "two-stream", folder: str | Path | None = None, *, region_dim: int = 64,
                            hidden: int = 32, layers: int = 2, heads: int = 2, projection_dim: int = 32,
                            extra_texts: Sequence[str] = (), dropout: float = 0.0, seed: int = 0) -> DualEncoder:
    """A tiny random region model (BERT text encoder from a config), saved to and loaded back from ``folder`` if given."""
    from .tiny import tiny_tokenizer, tiny_vocab

    vocab = tiny_vocab(extra_texts)
    text_config = dict(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=2 * hidden, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
                       hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = build_region_model(architecture, region_dim=region_dim, hidden=hidden, layers=layers, heads=heads,
                               projection_dim=projection_dim, max_regions=50, dropout=dropout, text_config=text_config,
                               tokenizer=tiny_tokenizer(vocab, model_max_length=64), model_id=f"tiny-region-{architecture}",
                               seed=seed)
    if folder is None:
        return model
    model.save(folder)
    return load_model(folder)
