"""Compose a dual encoder from two separately pretrained (or fresh) towers.

Text: any transformers encoder with a tokenizer (a sentence-transformers folder such as all-MiniLM-L6-v2,
BERT, XLM-R...), pooled (mean / cls / max; "auto" reads a sentence-transformers ``1_Pooling`` config).
Vision, by a prefixed spec:

    timm:NAME                    a timm model, fresh (e.g. timm:resnet18, timm:vit_small_patch16_224)
    timm:NAME@pretrained         timm's pretrained weights (needs its hub or a local cache)
    torchvision:NAME[@DEFAULT]   a torchvision classification model without its classifier
    open_clip:ARCH[/TAG]         the image tower of an open_clip model
    hf:PATH | PATH               a transformers vision model folder (ViT, CLIPVisionModel, a CLIP folder...)

Each tower gets a projection head into a shared space (linear or a 2-layer MLP) and the model owns a
learnable temperature (``InfoNCELoss`` trains it). Saved like every xmodal model: one folder with
``xmodal.json`` (kind "composed"), ``config.json`` (this composition), ``model.safetensors`` (all weights),
the text tower's config + tokenizer in ``text/`` and a transformers vision tower's config in ``vision/``;
loading rebuilds the architectures from those files and never needs the original weights again.

    >>> model = ComposedEncoder.compose("path/to/all-MiniLM-L6-v2", "timm:resnet18", embed_dim=256)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from ..errors import InvalidInputError, ModelNotFoundError
from .fingerprint import place_weights
from .backbones import Backbone
from .dual import DualEncoder
from .loading import BACKEND_LOADERS
from .registry import read_config, register_kind
from .seeding import local_rng

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
POOLINGS = ("mean", "cls", "max")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ComposeConfig:
    text_model: str
    vision_model: str
    embed_dim: int = 256
    pooling: str = "auto"
    image_size: int = 224
    projection: str = "linear"  # linear | mlp
    temperature: float = 0.07
    max_text_length: int = 64
    text_dim: int = 0  # filled in when composed
    vision_dim: int = 0
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- text tower
def _load_text(name: str, from_config: str | None = None) -> tuple[nn.Module, Any]:
    """A transformers text encoder and its tokenizer (``from_config``: rebuild from a saved config, no weights)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    src = from_config or name
    tok_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                 "sentencepiece.bpe.model", "tokenizer.model")
    if Path(src).is_dir() and not any((Path(src) / f).exists() for f in tok_files):
        raise InvalidInputError(f"text model '{name}' has no tokenizer (no {', '.join(tok_files[:3])}...); "
                                "save its tokenizer into the same folder.")
    try:
        model = AutoModel.from_config(AutoConfig.from_pretrained(src)) if from_config else AutoModel.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "that folder" if Path(name).is_dir() else "the Hugging Face cache (no hub here)"
        raise ModelNotFoundError(f"cannot load text model '{name}' from {where}: {str(e).splitlines()[0][:160]}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise InvalidInputError(
            f"text model '{name}' has no tokenizer (tokenizer.json / vocab.txt / tokenizer_config.json); "
            "save its tokenizer into the same folder.") from e
    if tokenizer is None or isinstance(tokenizer, bool):
        raise InvalidInputError(f"text model '{name}' has no tokenizer; save its tokenizer into the same folder.")
    if hasattr(model, "get_text_features") and hasattr(model, "text_model"):  # a CLIP folder: take its text tower
        model = model.text_model
    return model, tokenizer


def _auto_pooling(name: str) -> str:
    cfg = Path(name) / "1_Pooling" / "config.json"
    if cfg.exists():
        modes = json.loads(cfg.read_text())
        for mode in POOLINGS:
            if modes.get(f"pooling_mode_{mode}_tokens") or modes.get(f"pooling_mode_{mode}_token"):
                return mode
    return "mean"


# ---------------------------------------------------------------------------------------------- vision towers
class _FeatureOut(nn.Module):
    """Adapts any vision model to ``pixel_values (n, 3, s, s) -> features (n, d)``."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "hf":
            out = self.net(pixel_values=x)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                h = out.last_hidden_state
                pooled = h.mean(dim=(2, 3)) if h.ndim == 4 else h.mean(dim=1)
            return pooled.flatten(1)
        out = self.net(x)
        return out.flatten(1) if out.ndim > 2 else out


def _timm(spec: str, image_size: int, rebuild: bool) -> tuple[nn.Module, dict[str, Any]]:
    try:
        import timm
    except ImportError as e:
        raise ModelNotFoundError("timm vision towers need `pip install timm`.") from e
    name, _, weights = spec.partition("@")
    if not timm.is_model(name):
        raise ModelNotFoundError(f"timm has no model '{name}' (see timm.list_models('*{name[:6]}*')).")
    pretrained = weights == "pretrained" and not rebuild
    kwargs: dict[str, Any] = {"num_classes": 0}
    try:
        net = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # a hub download offline: one line
        raise ModelNotFoundError(f"cannot get timm weights for '{name}' ({type(e).__name__}); this machine has no hub: "
                                 f"use 'timm:{name}' for a fresh tower or put the weights in the HF cache.") from e
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return _FeatureOut(net, "timm"), {"mean": tuple(cfg.get("mean", CLIP_MEAN)), "std": tuple(cfg.get("std", CLIP_STD)),
                                      "native_size": (cfg.get("input_size") or (3, None, None))[-1]}


def _torchvision(spec: str, image_size: int, rebuild: bool) -> tuple[nn.Module, dict[str, Any]]:
    import torchvision

    name, _, weights = spec.partition("@")
    if name not in torchvision.models.list_models():
        raise ModelNotFoundError(f"torchvision has no model '{name}'.")
    try:
        net = torchvision.models.get_model(name, weights=None if rebuild or not weights else weights)
    except Exception as e:
        raise ModelNotFoundError(f"cannot get torchvision weights '{weights}' for '{name}' ({type(e).__name__}); "
                                 f"use 'torchvision:{name}' for a fresh tower.") from e
    last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise InvalidInputError(f"torchvision model '{name}' has no linear classifier to remove.")
    path, _ = last[-1]
    parent = net.get_submodule(path.rpartition(".")[0]) if "." in path else net
    setattr(parent, path.rpartition(".")[2], nn.Identity())  # features, not ImageNet logits
    return _FeatureOut(net, "torchvision"), {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "native_size": None}


def _open_clip(spec: str, image_size: int, rebuild: bool) -> tuple[nn.Module, dict[str, Any]]:
    try:
        import open_clip
    except ImportError as e:
        raise ModelNotFoundError("open_clip vision towers need `pip install open-clip-torch`.") from e
    arch, _, tag = spec.partition("/")
    if arch not in open_clip.list_models():
        raise ModelNotFoundError(f"open_clip has no architecture '{arch}'.")
    try:
        net = open_clip.create_model(arch, pretrained=None if rebuild else (tag or None))
    except Exception as e:
        raise ModelNotFoundError(f"cannot load open_clip weights '{spec}' ({type(e).__name__}: {str(e).splitlines()[0][:120]}).") from e
    size = getattr(net.visual, "image_size", None)
    return _FeatureOut(net.visual, "open_clip"), {"mean": CLIP_MEAN, "std": CLIP_STD,
                                                 "native_size": size[0] if isinstance(size, (tuple, list)) else size}


def _hf_vision(spec: str, image_size: int, rebuild: bool, config_dir: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import AutoConfig, AutoModel

    src = config_dir or spec
    try:
        net = AutoModel.from_config(AutoConfig.from_pretrained(src)) if rebuild else AutoModel.from_pretrained(spec)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load vision model '{spec}': {str(e).splitlines()[0][:160]}") from e
    if hasattr(net, "vision_model") and hasattr(net, "get_image_features"):  # a CLIP/SigLIP folder: its vision tower
        net = net.vision_model
    mean, std = CLIP_MEAN, CLIP_STD
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(src)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # no processor saved: CLIP's statistics
        pass
    native = getattr(net.config, "image_size", None)
    return _FeatureOut(net, "hf"), {"mean": mean, "std": std, "native_size": native}


VISION_TOWERS: dict[str, Callable[..., tuple[nn.Module, dict[str, Any]]]] = {
    "timm": _timm, "torchvision": _torchvision, "open_clip": _open_clip, "hf": _hf_vision}


def _vision(spec: str, image_size: int, rebuild: bool = False, config_dir: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in VISION_TOWERS:
        if prefix == "hf":
            return _hf_vision(rest, image_size, rebuild, config_dir)
        return VISION_TOWERS[prefix](rest, image_size, rebuild)
    if Path(spec).is_dir() or config_dir:
        return _hf_vision(spec, image_size, rebuild, config_dir)
    raise InvalidInputError(f"unknown vision tower '{spec}': use timm:NAME, torchvision:NAME, open_clip:ARCH or a "
                            "transformers vision folder (hf:PATH).")


def _probe(vision: nn.Module, spec: str, image_size: int, native: int | None) -> int:
    """Run one blank image through the tower: its feature size, or one clear line if the size does not fit."""
    vision.eval()
    try:
        with torch.no_grad():
            out = vision(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:  # position embeddings / patch grids of a fixed size
        takes = f"takes {native} px images" if native else "cannot read"
        raise InvalidInputError(
            f"vision tower '{spec}' {takes}, but the data is prepared at {image_size} px: set --image-size "
            f"{native or '(its size)'} or choose a tower for {image_size} px ({type(e).__name__}).") from e
    if out.ndim != 2:
        raise InvalidInputError(f"vision tower '{spec}' gives {tuple(out.shape)} outputs, not one vector per image.")
    return int(out.shape[1])


def _head(kind: str, dim_in: int, dim_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim_in, dim_out, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim_in, dim_in), nn.GELU(), nn.Linear(dim_in, dim_out))
    raise InvalidInputError(f"unknown projection '{kind}'; use linear or mlp.")


# ---------------------------------------------------------------------------------------------- backbone
class ComposedBackbone(Backbone):
    """A transformers text tower + any vision tower, each with its projection head, and a learnable temperature."""

    backend = "composed"
    text_tower = ("text_model",)  # the heads belong to neither tower: a locked tower still learns its projection
    image_tower = ("vision",)

    def __init__(self, config: ComposeConfig, text_model: nn.Module, tokenizer: Any, vision: nn.Module,
                 name: str = "composed") -> None:
        super().__init__()
        from torchvision.transforms import v2

        self.config, self.name = config, name
        self.text_model, self.tokenizer, self.vision = text_model, tokenizer, vision
        self.text_head = _head(config.projection, config.text_dim, config.embed_dim)
        self.image_head = _head(config.projection, config.vision_dim, config.embed_dim)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)))
        self.pooling = config.pooling
        s = config.image_size
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(s, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                                     v2.CenterCrop(s), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(list(config.mean), list(config.std))])

    # -------------------------------------------------------------- inputs
    @property
    def image_size(self) -> int:
        return self.config.image_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_text_length,
                             return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def preprocess(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.transform(im) for im in images])}

    # -------------------------------------------------------------- features
    def text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.text_model(**batch).last_hidden_state
        mask = batch.get("attention_mask")
        return hidden, (mask if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device))

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h, mask = self.text_states(batch)
        m = mask.unsqueeze(-1).to(h.dtype)
        if self.pooling == "cls":
            pooled = h[:, 0]
        elif self.pooling == "max":
            pooled = h.masked_fill(m == 0, torch.finfo(h.dtype).min).amax(dim=1)
        else:
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.text_head(pooled)

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_head(self.vision(batch["pixel_values"]))

    @property
    def embedding_dim(self) -> int:
        return self.config.embed_dim

    @property
    def trainable_logit_scale(self) -> nn.Parameter:
        """The log of the logit scale (1 / temperature); ``InfoNCELoss`` trains this one instead of its own."""
        return self.log_logit_scale

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale

    # -------------------------------------------------------------- saving
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_model

        (folder / "text").mkdir(parents=True, exist_ok=True)
        self.text_model.config.save_pretrained(folder / "text")
        self.tokenizer.save_pretrained(folder / "text")
        if self.vision.kind == "hf":
            (folder / "vision").mkdir(exist_ok=True)
            self.vision.net.config.save_pretrained(folder / "vision")
        (folder / CONFIG_FILE).write_text(json.dumps({"xmodal_composed": asdict(self.config)}, indent=2))
        save_model(self, str(folder / WEIGHTS_FILE))


def compose_backbone(text_model: str, vision_model: str, *, embed_dim: int = 256, pooling: str = "auto",
                     image_size: int = 224, projection: str = "linear", temperature: float = 0.07,
                     max_text_length: int = 64, seed: int = 0) -> ComposedBackbone:
    """Build the towers (pretrained where the specs say so), probe the vision tower at ``image_size``, add heads."""
    if pooling != "auto" and pooling not in POOLINGS:
        raise InvalidInputError(f"unknown pooling '{pooling}'; use auto, {', '.join(POOLINGS)}.")
    with local_rng(seed):  # fresh towers (and any newly initialised text layers) are seeded, globally untouched
        text, tokenizer = _load_text(text_model)
        vision, info = _vision(vision_model, image_size)
    vision_dim = _probe(vision, vision_model, image_size, info.get("native_size"))
    cfg = ComposeConfig(text_model=str(text_model), vision_model=vision_model, embed_dim=embed_dim,
                        pooling=_auto_pooling(text_model) if pooling == "auto" else pooling, image_size=image_size,
                        projection=projection, temperature=temperature, max_text_length=max_text_length,
                        text_dim=int(text.config.hidden_size), vision_dim=vision_dim, mean=tuple(info["mean"]),
                        std=tuple(info["std"]))
    name = f"compose:{Path(str(text_model)).name}+{vision_model}"
    with local_rng(seed):  # the heads' initialisation, without touching the global random state
        return ComposedBackbone(cfg, text, tokenizer, vision, name=name)


def load_composed_backbone(folder: str | Path, name: str | None = None) -> ComposedBackbone:
    """Rebuild the architectures from a saved folder's configs, then load its weights."""
    from safetensors.torch import load_model

    folder = Path(folder)
    raw = json.loads((folder / CONFIG_FILE).read_text())["xmodal_composed"]
    cfg = ComposeConfig(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    text, tokenizer = _load_text(str(folder / "text"), from_config=str(folder / "text"))
    vision_cfg = str(folder / "vision") if (folder / "vision").is_dir() else None
    vision, _ = _vision(cfg.vision_model, cfg.image_size, rebuild=True, config_dir=vision_cfg)
    with local_rng():  # random init, overwritten by the saved weights
        backbone = ComposedBackbone(cfg, text, tokenizer, vision, name=name or f"compose:{cfg.vision_model}")
    load_model(backbone, str(folder / WEIGHTS_FILE))
    return backbone


BACKEND_LOADERS["composed"] = lambda folder, name: load_composed_backbone(folder, name=name)


@register_kind("composed")
class ComposedEncoder(DualEncoder):
    """A ``DualEncoder`` over a ``ComposedBackbone``; ``xmodal.models.load_model`` opens its folders by kind."""

    @classmethod
    def compose(cls, text_model: str, vision_model: str, **kwargs: Any) -> "ComposedEncoder":
        backbone = compose_backbone(text_model, vision_model, **kwargs)
        return cls(backbone, model_id=backbone.name)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None, dtype: Any = None) -> "ComposedEncoder":
        folder = Path(str(name_or_path))
        config = read_config(folder)
        if config is None or config.kind != cls.kind:
            found = "no xmodal.json" if config is None else f"kind '{config.kind}'"
            raise ModelNotFoundError(f"'{folder}' is not a saved composed model ({found}).")
        model = cls(load_composed_backbone(folder, name=config.model_id), model_id=config.model_id)
        return place_weights(model, device, dtype)


def parse_compose_spec(spec: str) -> dict[str, Any]:
    """``compose:text=PATH,vision=timm:resnet18,dim=256,pooling=mean,image_size=224`` -> ``compose_backbone`` kwargs."""
    body = spec[len("compose:"):] if spec.startswith("compose:") else spec
    keys = {"text": "text_model", "vision": "vision_model", "dim": "embed_dim", "pooling": "pooling",
            "image_size": "image_size", "projection": "projection"}
    out: dict[str, Any] = {}
    for part in filter(None, body.split(",")):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in keys:
            raise InvalidInputError(f"bad compose spec part '{part}': use {', '.join(k + '=...' for k in keys)}.")
        out[keys[k.strip()]] = int(v) if k.strip() in ("dim", "image_size") else v.strip()
    if "text_model" not in out or "vision_model" not in out:
        raise InvalidInputError("a compose spec needs text=... and vision=... (e.g. compose:text=./minilm,vision=timm:resnet18).")
    return out



def build_tiny_composed(folder: str | Path | None = None, *, extra_texts: Sequence[str] = (), vision_model: str = "timm:test_resnet",
                        image_size: int = 30, embed_dim: int = 32, hidden: int = 32, seed: int = 0) -> ComposedEncoder:
    """A tiny composed model for tests and offline demos: a random 2-layer BERT (word-level tokenizer) + ``vision_model``.

    The text tower is saved as a transformers folder first (``folder/tiny-text`` or a temporary one), so it is
    loaded through the same path as a user's sentence-transformers folder.
    """
    import tempfile

    from transformers import BertConfig, BertModel

    from .tiny import tiny_tokenizer, tiny_vocab

    vocab = tiny_vocab(extra_texts)
    with local_rng(seed):
        bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=2 * hidden, max_position_embeddings=64))
    with tempfile.TemporaryDirectory() as tmp:
        text_dir = Path(folder) / "tiny-text" if folder is not None else Path(tmp) / "tiny-text"
        bert.save_pretrained(text_dir)
        tiny_tokenizer(vocab, model_max_length=64).save_pretrained(text_dir)
        model = ComposedEncoder.compose(str(text_dir), vision_model, embed_dim=embed_dim, image_size=image_size,
                                        pooling="mean", seed=seed)
    if folder is None:
        return model
    model.save(Path(folder) / "model")
    return ComposedEncoder.from_pretrained(Path(folder) / "model")
