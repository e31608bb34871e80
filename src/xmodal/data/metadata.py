"""Per-item metadata for folder collections: a manifest file, JSON sidecars and basic file facts.

- ``read_metadata_file(path)``: CSV / TSV / JSONL keyed by the item's path relative to the folder
  (column ``path``; also accepted: ``file``, ``filename``, ``image``, ``id``). CSV/TSV values get
  their types from pyarrow's CSV reader (numbers, true/false, dates as ISO text); empty cells are absent.
- ``sidecar(path)``: ``photo.jpg.json`` beside ``photo.jpg`` (a JSON object).
- ``file_facts(path)``: ``size`` (bytes), ``mtime`` (ISO 8601, UTC), ``width``/``height`` (pixels,
  from the image header; no decoding) and ``taken`` (EXIF DateTimeOriginal, ISO 8601) where present.

Dates are ISO 8601 text so that filters compare them as text (``taken >= "2021-06-01"``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

KEY_COLUMNS = ("path", "file", "filename", "image", "id")
SIDECAR_SUFFIX = ".json"
EXIF_DATE_TAGS = (36867, 36868, 306)  # DateTimeOriginal, DateTimeDigitized, DateTime


def _plain(v: Any) -> Any:
    """A JSON-able value: dates/times as ISO text, everything else as it is."""
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    return v


def read_metadata_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {field: value}}`` from a CSV, TSV or JSONL file (by its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"metadata file '{path}' does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = _read_jsonl(path)
    elif suffix in (".csv", ".tsv", ".tab", ".txt"):
        rows = _read_csv(path, "\t" if suffix in (".tsv", ".tab") else ",")
    else:
        raise InvalidInputError(f"metadata file '{path}': expected .csv, .tsv or .jsonl; got '{suffix or 'no suffix'}'.")
    if not rows:
        return {}
    key = next((k for k in KEY_COLUMNS if k in rows[0]), None)
    if key is None:
        raise InvalidInputError(f"metadata file '{path}' has no key column: name one column "
                                f"{' / '.join(KEY_COLUMNS)} (the image path relative to the folder); "
                                f"its columns are {list(rows[0])[:10]}.")
    out: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, start=1):
        rel = row.get(key)
        if rel is None or str(rel).strip() == "":
            raise InvalidInputError(f"metadata file '{path}', record {n}: the '{key}' value is empty.")
        rel = str(rel).strip()
        rel = Path(rel[2:] if rel.startswith("./") else rel).as_posix()
        out[rel] = {k: _plain(v) for k, v in row.items() if k != key and v is not None}
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInputError(f"metadata file '{path}', line {n}: not valid JSON ({e.msg}).") from None
            if not isinstance(rec, dict):
                raise InvalidInputError(f"metadata file '{path}', line {n}: expected a JSON object per line.")
            rows.append(rec)
    return rows


def _read_csv(path: Path, delimiter: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        # keys stay text ("001.jpg" must not become 1); other columns get pyarrow's inferred types
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f, delimiter=delimiter), [])
        types = {k: pa.string() for k in header if k in KEY_COLUMNS}
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                               convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise InvalidInputError(f"metadata file '{path}' cannot be read as {'TSV' if delimiter == chr(9) else 'CSV'}: "
                                f"{str(e).splitlines()[0]}") from None
    return table.to_pylist()


def sidecar(image_path: str | Path) -> dict[str, Any]:
    """The JSON object in ``<image>.json`` beside the image, or ``{}`` when there is none."""
    side = Path(str(image_path) + SIDECAR_SUFFIX)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"sidecar '{side}' is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"sidecar '{side}' must hold a JSON object (field: value).")
    return data


def file_facts(path: str | Path) -> dict[str, Any]:
    """Size, modification time, pixel size and EXIF capture date of one image file (header only)."""
    from PIL import Image

    path = Path(path)
    st = path.stat()
    facts: dict[str, Any] = {"size": int(st.st_size),
                             "mtime": dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        with Image.open(path) as im:  # reads the header, not the pixels
            facts["width"], facts["height"] = int(im.width), int(im.height)
            exif = im.getexif()
            for tag in EXIF_DATE_TAGS:
                raw = exif.get(tag) or (exif.get_ifd(0x8769).get(tag) if tag != 306 else None)
                taken = _exif_date(raw)
                if taken:
                    facts["taken"] = taken
                    break
    except Exception:  # an unreadable image keeps its file facts; encoding reports it
        pass
    return facts


def _exif_date(raw: Any) -> str | None:
    """EXIF "2021:06:01 12:30:00" as ISO "2021-06-01T12:30:00" (None if absent or malformed)."""
    if not isinstance(raw, str):
        return None
    try:
        return dt.datetime.strptime(raw.strip()[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None
