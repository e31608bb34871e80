"""LexicalIndex (BM25 via tantivy): add/remove/sync, filters, persistence, hostile queries and ids."""

from __future__ import annotations

import pytest

from xmodal.errors import CorruptIndexError, InvalidInputError
from xmodal.indexes.lexical import LexicalIndex, item_text


def make() -> LexicalIndex:
    lex = LexicalIndex(fields=["caption"])
    lex.add(["a", "b", "odd\udcff.jpg"], ["a red dog on grass", "blue car XK-4821 parked", "two dogs and a cat"])
    return lex


def test_bm25_ranks_exact_terms_and_stems():
    lex = make()
    scores, ids = lex.search("xk-4821", 5)
    assert ids == ["b"] and scores.shape == (1,) and scores[0] > 0
    assert set(lex.search("dog", 5)[1]) == {"a", "odd\udcff.jpg"}  # "dogs" stems to "dog"
    assert lex.search("zebra", 5)[1] == [] and lex.search("  ", 5)[1] == []


def test_remove_add_and_sync_take_effect():
    lex = make()
    assert lex.remove(["a", "missing"]) == 1
    assert lex.search("dog", 5)[1] == ["odd\udcff.jpg"]
    assert lex.sync({"b": "blue car", "z": "zebra dog"}) == (2, 1)
    assert lex.search("dog", 5)[1] == ["z"] and lex.search("xk", 5)[1] == [] and len(lex) == 2
    lex.add(["b"], ["green car"])  # an id present is replaced
    assert lex.search("blue", 5)[1] == [] and lex.search("green", 5)[1] == ["b"]


def test_filter_is_an_allow_list():
    lex = make()
    assert lex.search("dog", 5, filter={"odd\udcff.jpg"})[1] == ["odd\udcff.jpg"]
    assert lex.search("dog", 5, filter=["b", "nope"])[1] == []


def test_query_syntax_never_reaches_tantivy():
    lex = make()
    for q in ['key:0', 'text:"dog" OR (', 'dog AND NOT car', '*', 'a)]}"\\', "key:[0 TO 9]"]:
        scores, ids = lex.search(q, 5)  # no parse error, no field access
        assert len(ids) == len(scores)
    assert lex.search("key:0", 5)[1] == []


def test_round_trip_keeps_texts_fields_and_odd_ids():
    lex = make()
    back = LexicalIndex.from_bytes(lex.to_bytes())
    assert back.fields == ["caption"] and back.texts() == lex.texts()
    assert back.search("dog", 5)[1] == lex.search("dog", 5)[1]
    with pytest.raises(CorruptIndexError):
        LexicalIndex.from_bytes(b"{not json")


def test_bad_input_is_one_clear_error():
    lex = make()
    with pytest.raises(InvalidInputError, match="one text per id"):
        lex.add(["x"], [])
    with pytest.raises(InvalidInputError, match="strings"):
        lex.add([1], ["one"])
    with pytest.raises(InvalidInputError, match="k must be"):
        lex.search("dog", 0)


def test_item_text_joins_chosen_fields():
    assert item_text({"caption": "a dog", "title": None, "tags": ["x", "y"], "n": 3}, ["caption", "title", "tags", "n"]) \
        == "a dog\nx\ny\n3"
