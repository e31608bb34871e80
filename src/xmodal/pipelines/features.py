"""``features_split`` / ``features_info`` / ``features_convert``: ``xmodal features ...`` as library calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def features_split(src: str | Path, out: str | Path, *, progress: bool = True) -> Any:
    """Split a bottom-up-attention TSV into one npz per image (resumable); returns the split report."""
    from ..data.features import split_tsv

    return split_tsv(src, out, progress=progress)


def features_info(path: str | Path, format: str = "auto", *, limit: int | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Format, count, feature dim, regions per image, box statistics and skipped records of a feature store."""
    from ..data.features import describe_features

    return describe_features(path, format, limit=limit, progress=progress)


def features_convert(src: str | Path, out: str | Path, to: str = "auto", *, overwrite: bool = False,
                     progress: bool = True) -> tuple[Path, list[tuple[str, str]], str, int]:
    """Copy a feature store into another format: (written path, skipped records, its format, its size)."""
    from ..data.features import FeatureStore, convert_features

    path, skipped = convert_features(src, out, to, overwrite=overwrite, progress=progress)
    with FeatureStore.open(path) as st:
        return Path(path), skipped, st.format, len(st)
