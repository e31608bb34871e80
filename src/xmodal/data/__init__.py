"""Datasets, image loading, region feature stores and the synthetic benchmark."""

from .images import IMAGE_SUFFIXES, find_images, open_image

__all__ = ["IMAGE_SUFFIXES", "find_images", "open_image"]
