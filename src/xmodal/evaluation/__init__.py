"""Evaluation: R@K / mean recall in both directions, MRR, nDCG, pseudo recall (all in percent), and
MUGE / Chinese-CLIP prediction files the official scorers accept."""

from .evaluator import RetrievalEvaluator, format_table, write_metrics
from .metrics import METRIC_UNITS, first_hit_ranks, mean_recall, ndcg_at_k, pseudo_recall
from .muge import check_predictions, muge_score, write_muge_predictions
from .predictions import write_predictions

__all__ = ["RetrievalEvaluator", "format_table", "write_metrics", "METRIC_UNITS", "first_hit_ranks", "mean_recall",
           "ndcg_at_k", "pseudo_recall", "check_predictions", "muge_score", "write_muge_predictions",
           "write_predictions"]
