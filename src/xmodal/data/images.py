"""Opening images with clear errors, and finding them in folders."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Refuse decompression bombs rather than exhausting memory (PIL warns at ~89 Mpx by default).
Image.MAX_IMAGE_PIXELS = 178_956_970


def open_image(source: Any) -> Image.Image:
    """An RGB ``PIL.Image`` from a path, bytes, a file object or an image.

    Raises ``InvalidInputError`` naming the source when it is missing, unreadable or corrupt.
    The image is fully decoded here, so truncated files fail now rather than later inside a batch.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
    name = str(source) if isinstance(source, (str, Path)) else type(source).__name__
    try:
        if isinstance(source, (bytes, bytearray)):
            img = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, Path)):
            if not Path(source).exists():
                raise InvalidInputError(f"image not found: '{source}'.")
            img = Image.open(source)
        else:
            img = Image.open(source)
        img.load()
        return img.convert("RGB")
    except InvalidInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"cannot read image '{name}': {e}") from e


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
