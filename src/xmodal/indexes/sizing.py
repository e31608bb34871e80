"""Size rules shared by index backends and the automatic index choice (one definition each)."""

from __future__ import annotations

import numpy as np


def ivf_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: about ``4 sqrt(n)``, with at least 39 training points per list (FAISS' minimum)."""
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def plaid_centroids(n_tokens: int) -> int:
    """k-means centroids of a PLAID-style index: ``2**floor(log2(16 sqrt(tokens)))``, PLAID's own rule.

    The earlier ``4 sqrt`` left residuals too large for 2-bit codes on hard data: with 5,000 docs x 32 noisy
    tokens, re-scoring every document with decoded vectors reached recall@10 0.47 at 1,024 centroids and
    0.57 at 4,096 (benchmarks/late_interaction.py --data hard; see the issue-20 note).
    """
    return int(2 ** np.floor(np.log2(max(2.0, 16 * np.sqrt(n_tokens)))))
