"""Encoders: dual encoders (CLIP/SigLIP/Chinese-CLIP/open_clip), and later cross, late-interaction and region models."""

from .backbones import Backbone, HFBackbone, OpenClipBackbone
from .dual import DualEncoder
from .loading import load_backbone
from .tiny import build_tiny_model


def load_model(name_or_path: str, role: str | None = None, **kwargs):
    """Load any saved xmodal model by the ``kind`` in its ``xmodal.json`` (dual by default).

    ``role``: what the caller needs from it: ``"multi-vector"`` (token/patch vectors, e.g. for a
    late-interaction index), ``"single-vector"`` (one vector per item), or None (the model's own kind).
    """
    import json
    from pathlib import Path

    from .multivector import load_pretrained_late

    pretrained = load_pretrained_late(name_or_path, **kwargs)  # ColPali/ColQwen2/FLMR: their config.json says so
    if pretrained is not None:
        if role == "single-vector":
            from ..errors import InvalidInputError

            raise InvalidInputError(f"'{name_or_path}' is a late-interaction model ({pretrained.kind}): it gives "
                                    "several vectors per item; use it with --engine late-interaction.")
        return pretrained
    if role == "multi-vector":
        from .late import LateInteractionEncoder

        return LateInteractionEncoder.from_pretrained(name_or_path, **kwargs)
    if role == "single-vector":
        return DualEncoder.from_pretrained(name_or_path, **kwargs)
    cfg = Path(str(name_or_path)) / "xmodal.json"
    kind = json.loads(cfg.read_text()).get("kind", "dual") if cfg.exists() else "dual"
    if kind == "joint":
        from .joint import JointModel

        return JointModel.from_pretrained(name_or_path, **kwargs)
    if kind == "late":
        from .late import LateInteractionEncoder

        return LateInteractionEncoder.from_pretrained(name_or_path, **kwargs)
    if kind == "region-cross":
        from .regions import RegionCrossEncoder

        return RegionCrossEncoder.from_pretrained(name_or_path, **kwargs)
    return DualEncoder.from_pretrained(name_or_path, **kwargs)

__all__ = ["Backbone", "HFBackbone", "OpenClipBackbone", "DualEncoder", "load_backbone", "build_tiny_model", "load_model"]
