"""open_image: decompression bombs refused from the header, big photos decoded small."""

from __future__ import annotations

import io
import zlib
import struct

import pytest
from PIL import Image

from xmodal.data.images import open_image
from xmodal.errors import InvalidInputError


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (decoding it would need width*height*3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * width
    idat = zlib.compress(row * 4, 9)  # only 4 rows of data: enough to be a PNG, never decoded here
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bomb_below_pillows_hard_limit_is_refused_before_decoding(tmp_path):
    # 18000^2 = 324 Mpx: above the old MAX_IMAGE_PIXELS (179 Mpx) yet below Pillow's raise at 2x, so it used
    # to be decoded (5 GB). The header is read, the pixels are not.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(18000, 18000))
    with pytest.raises(InvalidInputError, match="324 megapixels, above the limit"):
        open_image(path)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), "red").save(buf, format="PNG")
    with pytest.raises(InvalidInputError, match="above the limit"):
        open_image(buf.getvalue(), max_pixels=5000)
    monkeypatch.setenv("XMODAL_MAX_IMAGE_PIXELS", "9999")
    with pytest.raises(InvalidInputError, match="XMODAL_MAX_IMAGE_PIXELS"):
        open_image(buf.getvalue())
    monkeypatch.setenv("XMODAL_MAX_IMAGE_PIXELS", "10000")
    assert open_image(buf.getvalue()).size == (100, 100)


def test_min_side_decodes_jpegs_small():
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 10, 10)).save(buf, format="JPEG", quality=90)
    img = open_image(buf.getvalue(), min_side=224)
    assert min(img.size) >= 224 and img.size[0] <= 1000  # DCT scaling by 8: 500x375
    assert img.mode == "RGB" and abs(img.getpixel((10, 10))[0] - 200) < 8
    full = open_image(buf.getvalue())
    assert full.size == (4000, 3000)


def test_min_side_reduces_other_formats():
    buf = io.BytesIO()
    Image.new("P", (1200, 900), 3).save(buf, format="PNG")
    img = open_image(buf.getvalue(), min_side=224)
    assert img.size == (300, 225) and img.mode == "RGB"
