"""Hybrid lexical + dense search over collections (issue #15 items 3-4): image folders with texts, text collections."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from xmodal.collection import build_collection, build_text_collection, open_collection
from xmodal.errors import InvalidInputError

RARE = "ZQ-4471"  # a product code: no encoder trained on anything knows it


def _captions(folder, target: str = "img_07_black.png", code: str = RARE):
    """A captions file for image_folder: every image gets a plain caption, one also gets a rare code."""
    rows = []
    for p in sorted(folder.rglob("*.png")):
        rel = p.relative_to(folder).as_posix()
        rows.append({"path": rel, "caption": f"a photo of a round shape on {rel.split('_')[-1][:-4]}",
                     "title": f"product {code}" if rel == target else "product sample", "shop": "north"})
    f = folder.parent / "captions.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    return f


def test_hybrid_finds_a_rare_term_that_dense_ranks_low(tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    query = f"product {RARE}"
    dense = open_collection(tmp_path / "idx").retriever(model=tiny_model).search(text=query, k=12)
    target = dense.ids[-1]  # the image dense search ranks last for the query gets the code in its title
    report = build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False,
                              texts=_captions(image_folder, target=target), text_fields=["caption", "title"])
    assert report.lexical_size == 12 and report.added == 0  # texts alone changed: nothing re-encoded
    r = open_collection(tmp_path / "idx").retriever(model=tiny_model)
    dense = r.search(text=query, k=12, mode="dense")
    assert dense.ids.index(target) == 11 and dense.stage == "retrieve"
    lexical = r.search(text=RARE, k=5, mode="lexical")
    assert lexical.ids == [target] and lexical.stage == "lexical"
    # the code alone: only the target matches lexically, so both fusions put it first although dense ranks it last
    for fusion in ("rrf", "weighted"):
        hybrid = r.search(text=RARE, k=3, mode="hybrid", fusion=fusion)
        assert hybrid.ids[0] == target and hybrid.stage == "hybrid", (fusion, hybrid.ids)
    # an allow-list filter applies to the lexical side too
    other = dense.ids[0]
    assert r.search(text=RARE, k=5, mode="lexical", filter={other}).ids == []
    assert r.search(text=RARE, k=5, mode="hybrid", filter={other, target}).ids == [target, other]


def test_lexical_index_follows_collection_updates(tiny_model, image_folder, tmp_path):
    caps = _captions(image_folder)
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False, texts=caps,
                     text_fields=["caption", "title"])
    # the image with the code goes, another image gets it (only the captions file changed for that one)
    (image_folder / "img_07_black.png").unlink()
    _captions(image_folder, target="img_02_blue.png")
    report = build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)  # file re-read
    assert report.removed == 1 and report.lexical_size == 11
    col = open_collection(tmp_path / "idx")
    assert col.lexical.fields == ["caption", "title"] and "img_07_black.png" not in col.lexical
    assert col.retriever(model=tiny_model).search(text=RARE, k=3, mode="lexical").ids == ["img_02_blue.png"]
    # a plain update without the texts file keeps the lexical index (a companion of every save)
    caps.unlink()
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    assert open_collection(tmp_path / "idx").lexical.text("img_02_blue.png").endswith(RARE)


def test_modes_refuse_clearly(tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    r = open_collection(tmp_path / "idx").retriever(model=tiny_model)
    with pytest.raises(InvalidInputError, match="no lexical|has none"):
        r.search(text="red", mode="hybrid")
    with pytest.raises(InvalidInputError, match="unknown search mode"):
        r.search(text="red", mode="bm25")


def _texts_file(tmp_path):
    rows = [{"id": f"t{i}", "text": f"a {c} square", "lang": "en", "year": 2000 + i}
            for i, c in enumerate(["red", "green", "blue", "yellow", "black"])]
    rows.append({"id": "code", "text": f"spare part {RARE}", "lang": "de", "year": 2024})
    f = tmp_path / "texts.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    return f


def test_text_collection_searched_by_image_and_text(tiny_model, image_folder, tmp_path):
    f = _texts_file(tmp_path)
    report = build_text_collection(f, tiny_model, tmp_path / "tidx", show_progress=False)
    assert (report.total, report.added, report.index_size, report.lexical_size) == (6, 6, 6, 6)
    col = open_collection(tmp_path / "tidx")
    assert col.kind == "texts" and col.index.metadata("code")["lang"] == "de"
    r = col.retriever(model=tiny_model)
    by_image = r.search(image=image_folder / "img_00_red.png", k=6)  # image -> text
    assert sorted(by_image.ids) == sorted(["t0", "t1", "t2", "t3", "t4", "code"])
    assert by_image.metadata[0]["text"] == col.text(by_image.ids[0])
    # text -> text: the exact text is its own nearest neighbour
    assert r.search(text="a blue square", k=1).ids == ["t2"]
    assert r.search(text=RARE, k=2, mode="lexical").ids == ["code"]
    assert r.search(text=f"part {RARE}", k=1, mode="hybrid").ids == ["code"]
    # incremental: one text changed, one removed, one added -> only two encoded
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    rows = [x for x in rows if x["id"] != "t4"] + [{"id": "t9", "text": "a cyan disc"}]
    rows[0]["text"] = "a crimson square"
    f.write_text("\n".join(json.dumps(x) for x in rows))
    report = build_text_collection(f, tiny_model, tmp_path / "tidx", show_progress=False)
    assert (report.added, report.removed, report.unchanged, report.index_size) == (2, 2, 4, 6)
    col = open_collection(tmp_path / "tidx")
    assert "t4" not in col.lexical and col.retriever(model=tiny_model).search(
        text="crimson", k=1, mode="lexical").ids == ["t0"]


def test_text_collection_refuses_an_image_index(tiny_model, image_folder, tmp_path):
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)
    with pytest.raises(InvalidInputError, match="index of images"):
        build_text_collection(_texts_file(tmp_path), tiny_model, tmp_path / "idx", show_progress=False)


def test_text_fields_from_item_metadata_without_a_texts_file(tiny_model, image_folder, tmp_path):
    # any metadata field of the items can be indexed (here the path; --metadata fields work the same way)
    report = build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False, text_fields=["path"])
    assert report.lexical_size == 12
    r = open_collection(tmp_path / "idx").retriever(model=tiny_model)
    assert r.search(text="yellow", k=3, mode="lexical").ids == ["img_03_yellow.png"]
    (image_folder / "img_03_yellow.png").unlink()
    build_collection(image_folder, tiny_model, tmp_path / "idx", show_progress=False)  # fields recorded
    col = open_collection(tmp_path / "idx")
    assert len(col.lexical) == 11 and col.lexical.fields == ["path"]
