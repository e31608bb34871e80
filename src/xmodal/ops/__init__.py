"""Shared math kernels (below models, indexes and losses): MaxSim for late interaction."""

from .maxsim import maxsim, maxsim_numpy_reference, pad

__all__ = ["maxsim", "maxsim_numpy_reference", "pad"]
