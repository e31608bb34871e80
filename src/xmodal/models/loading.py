"""Resolve a model name to a backbone: Hugging Face hub ids, ``hf:``/``open_clip:`` prefixes, local folders.

Real users download pretrained weights; this module keeps that path and turns every failure
(no network, wrong name, missing files) into one ``ModelNotFoundError`` that says what was asked,
where it looked and how to provide the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelNotFoundError
from .backbones import Backbone, HFBackbone, OpenClipBackbone
from .region_backbones import BACKBONES as REGION_BACKBONES
from .region_backbones import load_region_backbone
from .registry import _discover, read_config

# backend name (xmodal.json) -> loader(folder, model_id) for backbones defined in their own module (compose.py)
BACKEND_LOADERS: dict[str, Callable[[Path, str | None], Backbone]] = {}

OPEN_CLIP_PREFIX = "open_clip:"
HF_PREFIX = "hf:"


def load_backbone(name_or_path: str | os.PathLike) -> Backbone:
    """Load the towers for ``name_or_path``.

    Accepted forms:
      - a local folder saved by xmodal or by ``transformers``' ``save_pretrained`` (``config.json``),
        or an open_clip folder (``open_clip_config.json`` + weights);
      - ``hf:ORG/NAME`` or ``ORG/NAME``: a Hugging Face hub id (local cache first, then the hub);
      - ``open_clip:ARCH`` or ``open_clip:ARCH/PRETRAINED_TAG`` (e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``).
    """
    name = str(name_or_path)
    if name.startswith(OPEN_CLIP_PREFIX):
        return _load_open_clip_by_name(name[len(OPEN_CLIP_PREFIX):])
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_local_folder(path)
    if name.startswith(HF_PREFIX):
        return _load_hf(name[len(HF_PREFIX):], display=name)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(
            f"model '{name}' not found: no such local folder. Give a folder saved with `DualEncoder.save()` / "
            "`save_pretrained()`, a hub id like 'openai/clip-vit-base-patch32', or 'open_clip:ViT-B-32/<tag>'."
        )
    return _load_hf(name, display=name)


def _load_local_folder(path: Path) -> Backbone:
    config = read_config(path)
    if config is not None:
        if config.backend == "open_clip":
            return _load_open_clip_folder(path)
        if config.backend not in BACKEND_LOADERS and config.backend not in ("hf", None, *REGION_BACKBONES):
            _discover()  # a backend defined in another module of xmodal.models registers itself on import
        if config.backend in BACKEND_LOADERS:
            return BACKEND_LOADERS[config.backend](path, config.model_id)
        if config.backend in REGION_BACKBONES:
            return load_region_backbone(path, config.backend, name=config.model_id)
        return _load_hf(str(path), display=config.model_id or str(path))
    if (path / "open_clip_config.json").exists():
        return _load_open_clip_folder(path)
    if (path / "config.json").exists():
        return _load_hf(str(path), display=str(path))
    raise ModelNotFoundError(
        f"'{path}' is a folder but holds no model: expected config.json (transformers), "
        "open_clip_config.json (open_clip) or xmodal.json (saved by xmodal)."
    )


def _hub_help(name: str) -> str:
    return (
        f"To use it offline, download it on a machine with internet access "
        f"(`huggingface-cli download {name} --local-dir ./{name.split('/')[-1]}`) and pass that folder, "
        "or copy your Hugging Face cache (HF_HOME) here."
    )


def _load_hf(name: str, display: str) -> HFBackbone:
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError as e:  # pragma: no cover
        raise ModelNotFoundError("loading Hugging Face models needs `pip install transformers`.") from e
    is_local = Path(name).is_dir()
    try:
        model = AutoModel.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        image_processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = f"the local folder '{name}'" if is_local else (
            f"the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub"
        )
        hint = "" if is_local else " " + _hub_help(name)
        raise ModelNotFoundError(
            f"could not load model '{display}': looked in {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]}).{hint}"
        ) from e
    if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
        raise ModelNotFoundError(
            f"model '{display}' ({type(model).__name__}) is not a dual encoder: it has no "
            "get_text_features/get_image_features. Use a CLIP, SigLIP or Chinese-CLIP style model."
        )
    model.eval()
    return HFBackbone(model, tokenizer, image_processor, name=display)


def load_text_encoder(name_or_path: str) -> tuple[Any, Any]:
    """A pretrained text encoder + tokenizer (hub id or folder) to start a region model from, e.g. ``bert-base-uncased``."""
    from transformers import AutoModel, AutoTokenizer

    try:
        model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        local = Path(name_or_path).is_dir()
        hint = "" if local else " " + _hub_help(name_or_path)
        raise ModelNotFoundError(f"could not load text encoder '{name_or_path}' "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).{hint}") from e
    return model, tokenizer



def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise ModelNotFoundError("open_clip models need `pip install open-clip-torch` (xmodal[openclip]).") from e
    return open_clip


def _load_open_clip_by_name(spec: str) -> OpenClipBackbone:
    open_clip = _import_open_clip()
    arch, _, tag = spec.partition("/")
    if arch not in open_clip.list_models():
        raise ModelNotFoundError(
            f"open_clip has no architecture '{arch}'. Known ones include: {', '.join(open_clip.list_models()[:8])}, ..."
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag or None)
    except Exception as e:  # open_clip raises RuntimeError/OSError/HTTP errors for missing weights
        raise ModelNotFoundError(
            f"could not load open_clip weights '{spec}': {type(e).__name__}: {str(e).splitlines()[0][:200]}. "
            "Download the checkpoint on a connected machine and pass `open_clip:ARCH/path/to/weights.bin` "
            "or a folder with open_clip_config.json + open_clip_model.safetensors."
        ) from e
    if not tag:
        import warnings

        warnings.warn(f"open_clip:{arch} was created without pretrained weights (random init); add /TAG for weights.")
    model.eval()
    cfg = open_clip.get_model_config(arch)
    return OpenClipBackbone(model, open_clip.get_tokenizer(arch), preprocess, name=f"open_clip:{spec}", model_cfg=cfg)


def _load_open_clip_folder(path: Path) -> OpenClipBackbone:
    open_clip = _import_open_clip()
    from safetensors.torch import load_model

    meta = json.loads((path / "open_clip_config.json").read_text())
    model_cfg = meta["model_cfg"]
    arch = meta.get("model_name", path.name)
    model = open_clip.CLIP(**model_cfg)
    weights = path / "open_clip_model.safetensors"
    if weights.exists():
        load_model(model, str(weights))
    elif (path / "open_clip_pytorch_model.bin").exists():
        import torch

        model.load_state_dict(torch.load(path / "open_clip_pytorch_model.bin", map_location="cpu"))
    else:
        raise ModelNotFoundError(f"open_clip folder '{path}' has no weights (open_clip_model.safetensors).")
    model.eval()
    pp = meta.get("preprocess_cfg") or {}
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    preprocess = open_clip.image_transform(
        image_size, is_train=False, mean=pp.get("mean"), std=pp.get("std")
    )
    ctx = model_cfg["text_cfg"].get("context_length", 77)
    hf_tok = model_cfg["text_cfg"].get("hf_tokenizer_name")
    # CLIP-style open_clip models use open_clip's own BPE tokenizer (bundled with the package);
    # text towers taken from transformers name their tokenizer in the config.
    tokenizer = open_clip.HFTokenizer(hf_tok, context_length=ctx) if hf_tok else open_clip.SimpleTokenizer(context_length=ctx)
    return OpenClipBackbone(model, tokenizer, preprocess, name=str(arch), model_cfg=model_cfg, preprocess_cfg=pp)
