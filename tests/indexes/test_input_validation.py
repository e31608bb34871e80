"""Issue 19 items 9 and 19: API misuse gets one clear error instead of silent stringification or a TypeError."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal.errors import CorruptIndexError, InvalidInputError
from xmodal.indexes.faiss_index import FaissIndex
from xmodal.indexes.multivector import MultiVectorIndex


def unit(n, d=8, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("bad", [[None, "b"], [(2, 3), "b"], ["a", 7]])
def test_non_string_ids_are_refused(bad):
    index = FaissIndex(8)
    with pytest.raises(InvalidInputError, match="ids must be strings"):
        index.add(bad, unit(2))
    assert len(index) == 0
    mv = MultiVectorIndex(8, nbits=None)
    with pytest.raises(InvalidInputError, match="ids must be strings"):
        mv.add(bad, [unit(3), unit(2, seed=1)])


def test_a_single_string_as_ids_is_refused():
    with pytest.raises(InvalidInputError, match="list of strings"):
        FaissIndex(8).add("ab", unit(2))


def test_filter_must_be_a_collection_of_ids():
    index = FaissIndex(8)
    index.add(["a", "b", "abc"], unit(3))
    with pytest.raises(InvalidInputError, match="filter must be a collection"):
        index.search(unit(1), 2, filter="abc")  # used to allow the items 'a' and 'b' (its characters)
    with pytest.raises(InvalidInputError, match="filter must hold string ids"):
        index.search(unit(1), 2, filter=[1, 2])
    _, ids = index.search(unit(1), 3, filter={"abc"})
    assert ids[0].tolist() == ["abc", None, None]
    mv = MultiVectorIndex(8, nbits=None)
    mv.add(["a", "b"], [unit(3), unit(2, seed=1)])
    with pytest.raises(InvalidInputError, match="filter must be a collection"):
        mv.search([unit(2)], 1, filter="ab")


@pytest.mark.parametrize("dim", ["8", 0, 8.0, True, None])
def test_dimension_must_be_a_positive_int(dim):
    with pytest.raises(InvalidInputError, match="dimension must be a positive integer"):
        FaissIndex(dim)
    with pytest.raises(InvalidInputError, match="dimension must be a positive integer"):
        MultiVectorIndex(dim, nbits=None)


def test_damaged_ids_file_is_a_corrupt_index_error(tmp_path):
    import pyarrow as pa

    index = FaissIndex(8)
    index.add(["a", "b"], unit(2))
    index.save(tmp_path / "idx")
    from xmodal.indexes.manifest import read_manifest

    ids_file = read_manifest(tmp_path / "idx", verify=False).path(tmp_path / "idx", "ids.arrow")
    ids_file.write_text("{not arrow")
    with pytest.raises(CorruptIndexError, match="is damaged"):
        FaissIndex.load(tmp_path / "idx", verify=False)
    table = pa.table({"x": [1, 2]})
    with pa.OSFile(str(ids_file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(CorruptIndexError, match="wrong structure"):
        FaissIndex.load(tmp_path / "idx", verify=False)


def test_non_utf8_ids_survive_save_and_load(tmp_path):
    """Issue 19 item 5: an id from a non-UTF-8 file name ('caf\\udce9.png') must round-trip through ids.arrow."""
    odd = "caf\udce9.png"
    index = FaissIndex(8)
    index.add([odd, "plain.png"], unit(2))
    index.save(tmp_path / "idx")
    back = FaissIndex.load(tmp_path / "idx")
    _, ids = back.search(unit(2), 1)
    assert ids[:, 0].tolist() == [odd, "plain.png"] and back.ids() == [odd, "plain.png"] and odd in back
    back.add(["more.png"], unit(1, seed=3))
    back.save(tmp_path / "idx")
    assert FaissIndex.load(tmp_path / "idx").ids() == [odd, "plain.png", "more.png"]
