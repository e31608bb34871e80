"""Size rules shared by index backends and the automatic index choice (one definition each)."""

from __future__ import annotations

import numpy as np


def ivf_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: about ``4 sqrt(n)``, with at least 39 training points per list (FAISS' minimum)."""
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def plaid_centroids(n_tokens: int) -> int:
    """k-means centroids of a PLAID-style index: ``2**floor(log2(4 sqrt(tokens)))`` (PLAID's rule scaled down)."""
    return int(2 ** np.floor(np.log2(max(2.0, 4 * np.sqrt(n_tokens)))))
