"""Metrics against an independent reference (ranx) and a brute-force tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.evaluation.metrics import first_hit_ranks, ndcg_at_k, pseudo_recall, summarize


def random_problem(seed: int, q: int = 40, n: int = 60, ties: bool = False):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((q, n)).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)  # many equal scores
    pos = rng.random((q, n)) < 0.08
    pos[np.arange(q), rng.integers(0, n, q)] = True  # at least one positive each
    return scores, pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_ranx_without_ties(seed):
    ranx = pytest.importorskip("ranx")
    scores, pos = random_problem(seed)
    qrels = ranx.Qrels({f"q{i}": {f"d{j}": 1 for j in np.flatnonzero(pos[i])} for i in range(len(pos))})
    run = ranx.Run({f"q{i}": {f"d{j}": float(scores[i, j]) for j in range(scores.shape[1])} for i in range(len(pos))})
    ref = ranx.evaluate(qrels, run, ["hit_rate@1", "hit_rate@5", "hit_rate@10", "mrr", "ndcg@10"])
    ours = summarize(first_hit_ranks(scores, pos), ndcg_at_k(scores, pos, 10), "t2i")
    for k in (1, 5, 10):
        assert ours[f"t2i_R@{k}"] == pytest.approx(100 * ref[f"hit_rate@{k}"], abs=1e-9)
    # one unit per metrics dict: every score in percent (ranx reports fractions)
    assert ours["t2i_MRR"] == pytest.approx(100 * ref["mrr"], abs=1e-7)
    assert ours["t2i_nDCG@10"] == pytest.approx(100 * ref["ndcg@10"], abs=1e-4)


@pytest.mark.parametrize("seed", [3, 4])
def test_ties_are_pessimistic(seed):
    scores, pos = random_problem(seed, ties=True)
    ranks = first_hit_ranks(scores, pos)
    for i in range(len(scores)):
        # brute force: walk candidates best first, negatives before positives when scores are equal
        order = sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j], bool(pos[i, j])))
        assert ranks[i] == next(r for r, j in enumerate(order) if pos[i, j])


def test_constant_scores_never_hit():
    pos = np.zeros((3, 5), dtype=bool)
    pos[:, 2] = True
    assert (first_hit_ranks(np.zeros((3, 5)), pos) == 4).all()


def test_query_without_positive_is_an_error():
    with pytest.raises(ValueError):
        first_hit_ranks(np.zeros((1, 3)), np.zeros((1, 3), dtype=bool))


def test_pseudo_recall():
    retrieved = [["The Eiffel Tower is in Paris", "x"], ["nothing here", "a red BUS"]]
    answers = [["paris"], ["bus", "tram"]]
    assert pseudo_recall(retrieved, answers, ks=(1, 2)) == {"PRecall@1": 50.0, "PRecall@2": 100.0}
