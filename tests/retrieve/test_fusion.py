"""Rank fusion of dense and lexical lists."""

from __future__ import annotations

import pytest

from xmodal.errors import InvalidInputError
from xmodal.retrieve.fusion import fuse, reciprocal_rank, weighted


def test_rrf_sums_reciprocal_ranks():
    fused = dict(reciprocal_rank([[("a", 0.9), ("b", 0.5)], [("b", 12.0), ("c", 3.0)]], rrf_k=60))
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61) and fused["a"] == pytest.approx(1 / 61)
    assert [i for i, _ in fuse([("a", 0.9), ("b", 0.5)], [("b", 12.0), ("c", 3.0)])] == ["b", "a", "c"]


def test_weighted_normalises_each_list_and_alpha_shifts_the_balance():
    dense, lexical = [("a", 0.9), ("b", 0.1)], [("b", 20.0), ("c", 2.0)]
    assert weighted([dense, lexical], [0.5, 0.5])[0][0] == "b"
    assert fuse(dense, lexical, method="weighted", alpha=1.0)[0] == ("a", 1.0)
    assert fuse(dense, lexical, method="weighted", alpha=0.0)[0] == ("b", 1.0)


def test_ties_go_to_items_both_lists_found():
    assert fuse([("a", 1.0), ("b", 0.0)], [("b", 5.0)], method="weighted")[0][0] == "b"


def test_bad_fusion_and_alpha():
    with pytest.raises(InvalidInputError, match="unknown fusion"):
        fuse([], [], method="max")
    with pytest.raises(InvalidInputError, match="alpha"):
        fuse([], [], alpha=1.5)
