"""Faster R-CNN "bottom-up attention" region features (OSCAR, UNITER, M3P, TERN inputs) from disk.

One dictionary-like ``FeatureStore`` (image id -> ``RegionFeatures``) over every common format:

- a folder of per-image ``<id>.npz`` (keys ``regions``/``features``/``x``, ``boxes``/``bbox``, ...)
- the bottom-up-attention TSV (``image_id, image_w, image_h, num_boxes, boxes, features``, base64)
- HDF5 (a group per image id, or flat ``image_id``/``features``/``boxes`` datasets)
- LMDB (key = image id, value = npz bytes)

Records are read just in time with a bounded LRU cache, or all up front with ``in_memory=True``.
``write_features`` writes any of them; ``split_tsv``, ``describe_features`` and ``convert_features``
back ``xmodal features split|info|convert``; ``extract_features`` runs your own ``RegionExtractor``.
See docs/features.md.
"""

from .formats import FORMATS, detect_format
from .records import MissingFeaturesError, RegionFeatures
from .store import FeatureStore, write_features
from .tools import (ExtractReport, RegionExtractor, SplitReport, convert_features, describe_features,
                    extract_features, split_tsv)

__all__ = ["FORMATS", "ExtractReport", "FeatureStore", "MissingFeaturesError", "RegionExtractor", "RegionFeatures",
           "SplitReport", "convert_features", "describe_features", "detect_format", "extract_features", "split_tsv",
           "write_features"]
