"""Records files (JSONL/CSV/TSV/TXT) for text collections and captions."""

from __future__ import annotations

import pytest

from xmodal.data.records import read_records
from xmodal.errors import DatasetFormatError


def test_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": 7, "text": "seven", "lang": "en"}\n\n{"text": "no id"}\n')
    recs = read_records(tmp_path / "a.jsonl")
    assert [(r.id, r.text) for r in recs] == [("7", "seven"), ("3", "no id")] and recs[0].fields["lang"] == "en"
    (tmp_path / "b.csv").write_text('id,text,year\nx,"a, quoted",2001\n')
    assert read_records(tmp_path / "b.csv")[0].fields == {"id": "x", "text": "a, quoted", "year": "2001"}
    (tmp_path / "c.txt").write_text("first\n\nthird\n")
    assert [(r.id, r.text) for r in read_records(tmp_path / "c.txt")] == [("1", "first"), ("3", "third")]
    (tmp_path / "d.tsv").write_text("path\tcaption\nx.jpg\ta cat\n")
    assert read_records(tmp_path / "d.tsv", id_field=None, require_text=False)[0].id == "x.jpg"


@pytest.mark.parametrize("name, content, message", [
    ("e.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "already used on line 1"),
    ("f.jsonl", '{"id": "a", "text": "x"}\n{oops\n', "f.jsonl:2: not valid JSON"),
    ("g.jsonl", '{"id": "a"}\n', "no 'text' field"),
    ("h.jsonl", '["a", "b"]\n', "a JSON object"),
    ("i.csv", "", "no header row"),
    ("j.jsonl", "\n", "no records"),
])
def test_errors_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetFormatError, match=message):
        read_records(tmp_path / name)
