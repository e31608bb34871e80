"""Encoders: dual encoders (CLIP/SigLIP/Chinese-CLIP/open_clip), late interaction, cross-encoders, region models.

``load_model(path)`` opens any saved model by the kind recorded in its ``ModelConfig`` (see ``registry``);
``roles`` names what a model can do (``SingleVectorEncoder``, ``MultiVectorEncoder``, ``PairScorer``).
"""

from .backbones import Backbone, HFBackbone, OpenClipBackbone
from .dual import DualEncoder
from .loading import load_backbone
from .registry import KINDS, ModelConfig, load_model, read_config, register_kind, write_config
from .roles import MultiVectorEncoder, PairScorer, SingleVectorEncoder
from .tiny import build_tiny_model

__all__ = ["Backbone", "HFBackbone", "OpenClipBackbone", "DualEncoder", "load_backbone", "build_tiny_model",
           "load_model", "KINDS", "ModelConfig", "read_config", "write_config", "register_kind",
           "SingleVectorEncoder", "MultiVectorEncoder", "PairScorer"]
