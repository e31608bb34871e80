"""Evaluation: R@K / mean recall in both directions, MRR, nDCG, pseudo recall, MUGE predictions."""

from .evaluator import RetrievalEvaluator, format_table
from .metrics import first_hit_ranks, mean_recall, ndcg_at_k, pseudo_recall
from .muge import muge_score, write_muge_predictions

__all__ = ["RetrievalEvaluator", "format_table", "first_hit_ranks", "mean_recall", "ndcg_at_k", "pseudo_recall",
           "muge_score", "write_muge_predictions"]
