"""Datasets, image loading, region feature stores and the synthetic benchmark."""

from .features import (FeatureStore, MissingFeaturesError, RegionExtractor, RegionFeatures, extract_features,
                       write_features)
from .chinese_clip import read_chinese_clip
from .coco import read_coco_captions, write_coco_captions
from .datasets import load_dataset, read_csv, read_folder, read_karpathy, read_multi30k, read_muge, read_webdataset
from .images import IMAGE_SUFFIXES, find_images, open_image
from .types import Caption, ImageTextDataset

__all__ = ["IMAGE_SUFFIXES", "find_images", "open_image", "Caption", "ImageTextDataset", "load_dataset", "read_csv",
           "FeatureStore", "MissingFeaturesError", "RegionExtractor", "RegionFeatures", "extract_features", "write_features",
           "read_chinese_clip", "read_coco_captions", "write_coco_captions",
           "read_folder", "read_karpathy", "read_multi30k", "read_muge", "read_webdataset"]
