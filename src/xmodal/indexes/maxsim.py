"""MaxSim for the multi-vector index: the one implementation lives in ``xmodal.ops.maxsim``.

It is the late-interaction models' similarity, used by the index, the evaluator and the MaxSim loss alike;
it sits in ``ops``, below models, indexes and losses alike.
"""

from ..ops.maxsim import maxsim, maxsim_numpy_reference, pad

__all__ = ["maxsim", "maxsim_numpy_reference", "pad"]
