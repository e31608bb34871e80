"""Opening images with clear errors and bounded memory, and finding them in folders."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Pillow only *raises* at twice MAX_IMAGE_PIXELS, so a 39 KB PNG of 18000^2 pixels (324 Mpx, ~1 GB
# decoded, several GB while converting) passed its check. We read the size from the header and refuse
# above our own limit before any pixel is decoded. 120 Mpx admits 108 MP phone photos.
DEFAULT_MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = 2 * DEFAULT_MAX_PIXELS  # Pillow's own check stays as a backstop


class ImageTooLargeError(InvalidInputError):
    """An image has more pixels than the limit (found from its header, before decoding)."""


def max_image_pixels() -> int:
    """The pixel limit: ``XMODAL_MAX_IMAGE_PIXELS`` from the environment, else ``DEFAULT_MAX_PIXELS``."""
    raw = os.environ.get("XMODAL_MAX_IMAGE_PIXELS")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"XMODAL_MAX_IMAGE_PIXELS must be a whole number of pixels; got '{raw}'.") from None
    if value < 1:
        raise InvalidInputError(f"XMODAL_MAX_IMAGE_PIXELS must be positive; got {value}.")
    return value


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if hasattr(source, "read_bytes"):  # lazy references such as a webdataset member
        return str(source)
    return type(source).__name__


def open_image(source: Any, *, max_pixels: int | None = None, min_side: int | None = None) -> Image.Image:
    """An RGB ``PIL.Image`` from a path, bytes, a file object, an object with ``read_bytes()`` or an image.

    Args:
        max_pixels: refuse images with more pixels than this (read from the header, before decoding);
            default ``max_image_pixels()``.
        min_side: the caller only needs the shorter side to be at least this many pixels (e.g. a model's
            input size): JPEGs are then decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``) and other
            formats are reduced by an integer factor right after decoding, so big photos cost little memory.

    Raises ``InvalidInputError`` naming the source when it is missing, unreadable, corrupt or too large.
    The image is fully decoded here, so truncated files fail now rather than later inside a batch.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
    name = _describe(source)
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():  # our own limit below decides, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open_lazily(source)
        w, h = img.size
        if w * h > limit:
            img.close()
            raise ImageTooLargeError(
                f"image '{name}' is {w}x{h} = {w * h / 1e6:.0f} megapixels, above the limit of {limit / 1e6:.0f} "
                "megapixels (a decompression bomb or a very large scan); set XMODAL_MAX_IMAGE_PIXELS to allow it.")
        if min_side:
            img.draft("RGB", (min_side, min_side))  # JPEG: DCT scaling decodes straight to a smaller size
        img.load()
        img = img.convert("RGB") if img.mode != "RGB" else img
        factor = min(img.size) // min_side if min_side else 0
        return img.reduce(factor) if factor >= 2 else img
    except InvalidInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"cannot read image '{name}': {e}") from e


def _open_lazily(source: Any) -> Image.Image:
    """``Image.open`` (reads the header only) for every kind of source ``open_image`` takes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(source))
    if isinstance(source, (str, Path)):
        if not Path(source).exists():
            raise InvalidInputError(f"image not found: '{source}'.")
        return Image.open(source)
    if hasattr(source, "read_bytes"):
        return Image.open(io.BytesIO(source.read_bytes()))
    return Image.open(source)


def find_images(folder: str | Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """All image files below ``folder`` (recursive, hidden folders skipped), sorted for a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"'{folder}' is not a folder of images.")
    sfx = {s.lower() for s in suffixes}
    out = [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in sfx and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(out)
