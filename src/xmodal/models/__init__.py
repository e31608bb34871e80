"""Encoders: dual encoders (CLIP/SigLIP/Chinese-CLIP/open_clip), and later cross, late-interaction and region models."""

from .backbones import Backbone, HFBackbone, OpenClipBackbone
from .dual import DualEncoder
from .loading import load_backbone
from .tiny import build_tiny_model

__all__ = ["Backbone", "HFBackbone", "OpenClipBackbone", "DualEncoder", "load_backbone", "build_tiny_model"]
