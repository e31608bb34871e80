"""Records files: one item per line/row with an id, a text and any extra fields.

Read by ``xmodal index-texts`` (a text collection: the texts are the items) and by ``xmodal index
--texts`` (captions/titles of the images of a folder, keyed by relative path, for BM25 search).

Formats, by suffix:
- ``.jsonl`` / ``.ndjson``: one JSON object per line (``{"id": .., "text": .., "title": .., ...}``);
- ``.csv`` / ``.tsv``: a header row naming the columns;
- ``.txt`` (anything else): one text per line, ids are line numbers (``"1"``, ``"2"``, ...; blank lines skipped).
Without an id field (``id_field`` absent in a JSONL/CSV row) the id is the record's line number, so ids stay
stable while the file only grows at the end.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import DatasetFormatError
from .chinese_clip import json_lines

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}


@dataclass
class Record:
    """One item of a records file: its id, its main text (may be empty) and every other field."""

    id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)  # all fields of the row, id and text included


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from json_lines(path)
    elif suffix in TABLE_SUFFIXES:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=TABLE_SUFFIXES[suffix])
            if not reader.fieldnames:
                raise DatasetFormatError(f"{path}: no header row (the first row must name the columns).")
            for row in reader:
                if None in row:
                    raise DatasetFormatError(f"{path}:{reader.line_num}: more cells than header columns.")
                yield reader.line_num, {k: v for k, v in row.items() if v is not None}
    else:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield n, {"id": str(n), "text": line}


ID_FIELDS = ("id", "path", "image", "file")  # tried in order when no id field is named


def read_records(path: str | Path, *, id_field: str | None = "id", text_field: str = "text",
                 require_text: bool = True) -> list[Record]:
    """All records of ``path`` (see the module doc), ids checked unique; errors name file:line.

    ``id_field=None``: the first of ``ID_FIELDS`` the first record has (else line numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"records file not found: '{path}'.")
    records: list[Record] = []
    seen: dict[str, int] = {}
    try:
        for n, row in _rows(path):
            if not isinstance(row, dict):
                raise DatasetFormatError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}.")
            if id_field is None:
                id_field = next((f for f in ID_FIELDS if f in row), "id")
            raw_id = row.get(id_field, n)
            if raw_id is None or isinstance(raw_id, (dict, list)) or str(raw_id).strip() == "":
                raise DatasetFormatError(f"{path}:{n}: the id field '{id_field}' is empty or not a plain value.")
            text = row.get(text_field)
            if text is None and require_text:
                raise DatasetFormatError(f"{path}:{n}: no '{text_field}' field (fields: {sorted(row)}); "
                                         "name the text column with --text-field.")
            if text is not None and not isinstance(text, str):
                raise DatasetFormatError(f"{path}:{n}: the text field '{text_field}' is not a string.")
            item_id = str(raw_id)
            if item_id in seen:
                raise DatasetFormatError(f"{path}:{n}: id '{item_id}' already used on line {seen[item_id]}; "
                                         "ids must be unique.")
            seen[item_id] = n
            records.append(Record(item_id, text or "", dict(row)))
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if not records:
        raise DatasetFormatError(f"{path}: no records.")
    return records
