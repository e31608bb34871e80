"""FeatureStore over npz folders, bottom-up-attention TSV, HDF5 and LMDB: round trips, malformed input,
bounded just-in-time loading, thread safety, select/missing ids, the extractor hook."""

from __future__ import annotations

import base64
import multiprocessing
import pickle
import random
import threading
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from xmodal.data.features import (FeatureStore, MissingFeaturesError, RegionExtractor, RegionFeatures,
                                  convert_features, describe_features, detect_format, extract_features, write_features)
from xmodal.data.features import tsv as tsv_module
from xmodal.errors import DatasetFormatError, InvalidInputError, XmodalError

FORMATS = {"npz": "feats", "tsv": "feats.tsv", "hdf5": "feats.h5", "lmdb": "feats.lmdb"}


def make_records(n: int = 12, dim: int = 8, seed: int = 0, labels: bool = True) -> dict[str, RegionFeatures]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        r = 3 + i % 5
        xy = rng.uniform(0, 60, (r, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (r, 2))], axis=1)
        known = i % 4 != 3  # some records without image size
        out[f"img_{i:03d}" if i != 5 else "train2014/COCO_5.jpg"] = RegionFeatures(
            regions=rng.standard_normal((r, dim)).astype(np.float32), boxes=boxes,
            image_w=100 + i if known else None, image_h=90 + i if known else None,
            labels=rng.integers(0, 1600, r) if labels and i % 6 != 4 else None)
    out["empty"] = RegionFeatures(np.zeros((0, dim)), np.zeros((0, 4)), 50, 40)  # an image with no detection
    return out


def assert_same(got: RegionFeatures, want: RegionFeatures) -> None:
    np.testing.assert_array_equal(got.regions, want.regions)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    assert got.regions.dtype == np.float32 and got.boxes.dtype == np.float32
    assert (got.image_w, got.image_h) == (want.image_w, want.image_h)
    if want.labels is None:
        assert got.labels is None
    else:
        assert got.labels is not None and got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, want.labels)


# ----------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("in_memory", [False, True], ids=["lazy", "in_memory"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip(tmp_path, fmt, in_memory):
    records = make_records()
    path = write_features(records, tmp_path / FORMATS[fmt], fmt)
    assert path == tmp_path / FORMATS[fmt] and detect_format(path) == fmt
    with FeatureStore.open(path, in_memory=in_memory) as store:
        assert store.format == fmt and store.path == path and store.skipped == []
        assert sorted(store) == sorted(records) and len(store) == len(records)
        assert list(store) == list(store)  # stable order
        assert store.feature_dim == 8
        for image_id, want in records.items():
            assert image_id in store
            assert_same(store[image_id], want)
        assert store["empty"].regions.shape == (0, 8)
        ids = list(records)[::-1]
        for got, image_id in zip(store.get_many(ids), ids):
            assert_same(got, records[image_id])


def test_write_features_auto_format_and_overwrite(tmp_path):
    records = make_records(4)
    for name, fmt in [("a.tsv", "tsv"), ("a.hdf5", "hdf5"), ("a.lmdb", "lmdb"), ("a_npz", "npz")]:
        assert FeatureStore.open(write_features(records, tmp_path / name)).format == fmt
    with pytest.raises(InvalidInputError, match="already exists"):
        write_features(records, tmp_path / "a.tsv", "tsv")
    fewer = dict(list(records.items())[:2])
    write_features(fewer, tmp_path / "a_npz", "npz", overwrite=True)  # a folder store is replaced, not merged
    assert sorted(FeatureStore.open(tmp_path / "a_npz")) == sorted(fewer)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(InvalidInputError, match="not a feature store"):
        write_features(records, tmp_path / "photos", "npz", overwrite=True)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name]  # no leftovers


def test_write_features_streams_pairs_and_rejects_bad_ids(tmp_path):
    records = make_records(3)
    path = write_features(((k, v) for k, v in records.items()), tmp_path / "s.h5")
    assert sorted(FeatureStore.open(path)) == sorted(records)
    with pytest.raises(InvalidInputError, match="relative path"):
        write_features({"../escape": records["img_000"]}, tmp_path / "bad", "npz")
    with pytest.raises(InvalidInputError, match="not RegionFeatures"):
        write_features({"x": np.zeros((3, 8))}, tmp_path / "bad2.tsv")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2.tsv").exists()


def test_tsv_labels_must_be_all_or_none(tmp_path):
    recs = make_records(3, labels=False)
    recs["late"] = RegionFeatures(np.ones((2, 8)), np.ones((2, 4)), labels=np.array([1, 2]))
    with pytest.raises(InvalidInputError, match="without a labels column"):
        write_features(recs, tmp_path / "x.tsv")
    plain = write_features(make_records(3, labels=False), tmp_path / "plain.tsv")
    assert not plain.read_bytes().startswith(b"image_id")  # the classic headerless layout when there are no labels


def test_region_features_validation():
    rf = RegionFeatures(np.ones((3, 5), dtype=np.float64), [[0, 0, 1, 1]] * 3, 10, 20.0, [1.0, 2.0, 3.0])
    assert rf.regions.dtype == np.float32 and rf.boxes.dtype == np.float32 and rf.labels.dtype == np.int64
    assert (rf.num_regions, rf.dim, rf.image_w, rf.image_h) == (3, 5, 10, 20)
    with pytest.raises(DatasetFormatError, match="2-D"):
        RegionFeatures(np.ones(5), np.ones((5, 4)))
    with pytest.raises(DatasetFormatError, match=r"boxes must have shape \(3, 4\)"):
        RegionFeatures(np.ones((3, 5)), np.ones((2, 4)))
    with pytest.raises(DatasetFormatError, match=r"labels must have shape \(3,\)"):
        RegionFeatures(np.ones((3, 5)), np.ones((3, 4)), labels=[1, 2])
    with pytest.raises(DatasetFormatError, match="integer class ids"):
        RegionFeatures(np.ones((3, 5)), np.ones((3, 4)), labels=[1.5, 2, 3])
    with pytest.raises(DatasetFormatError, match="image_w"):
        RegionFeatures(np.ones((3, 5)), np.ones((3, 4)), image_w=-4)
    with pytest.raises(DatasetFormatError, match="numeric"):
        RegionFeatures(np.array([["a"]]), np.ones((1, 4)))


@pytest.mark.parametrize("bad", ["regions", "boxes"])
def test_region_features_refuse_nan_and_inf(bad):
    """Issue 19 item 19: NaN features were accepted and poisoned every similarity of the image."""
    regions, boxes = np.ones((3, 5)), np.ones((3, 4))
    (regions if bad == "regions" else boxes)[1, 2] = np.nan
    with pytest.raises(DatasetFormatError, match=f"{bad} contain NaN"):
        RegionFeatures(regions, boxes)
    regions[1, 2] = boxes[1, 2] = 1.0
    (regions if bad == "regions" else boxes)[0, 0] = np.inf
    with pytest.raises(DatasetFormatError, match="NaN or infinite"):
        RegionFeatures(regions, boxes)


# ----------------------------------------------------------------------------------------- TSV
def b64(a, dtype="<f4") -> str:
    return base64.b64encode(np.asarray(a, dtype=dtype).tobytes()).decode()


def row(image_id, regions, boxes, w=640, h=480, n=None, extra=()) -> str:
    n = len(regions) if n is None else n
    return "\t".join([str(image_id), str(w), str(h), str(n), b64(boxes), b64(regions), *extra]) + "\n"


def test_tsv_classic_headerless_layout(tmp_path):
    rng = np.random.default_rng(1)
    feats = {i: rng.standard_normal((36, 16)).astype(np.float32) for i in (391895, 522418)}
    boxes = {i: rng.uniform(0, 400, (36, 4)).astype(np.float32) for i in feats}
    path = tmp_path / "trainval_36.tsv"
    # one row as a Python-3 port of generate_tsv writes it (str() of base64 bytes), one with float64 boxes,
    # and an unnamed extra column (ignored: its meaning cannot be known without a header)
    r1 = "\t".join(["391895", "640", "480", "36", f"b'{b64(boxes[391895])}'", f"b'{b64(feats[391895])}'", "junk"])
    r2 = "\t".join(["522418", "500.0", "375", "36", b64(boxes[522418], "<f8"), b64(feats[522418]), "junk"])
    path.write_text(r1 + "\n" + r2 + "\n")
    store = FeatureStore.open(path)
    assert list(store) == ["391895", "522418"] and store.skipped == [] and store.feature_dim == 16
    np.testing.assert_array_equal(store[391895].regions, feats[391895])  # integer COCO ids work too
    np.testing.assert_array_equal(store["522418"].boxes, boxes[522418])
    assert (store["522418"].image_w, store["522418"].image_h, store["522418"].labels) == (500, 375, None)


def test_tsv_malformed_rows_are_skipped_with_line_numbers(tmp_path):
    rng = np.random.default_rng(2)
    good = {f"g{i}": (rng.standard_normal((4, 8)).astype(np.float32), rng.uniform(0, 50, (4, 4)).astype(np.float32))
            for i in range(5)}
    f, b = good["g0"]
    lines = [
        row("g0", *good["g0"]),                                                   # 1
        row("bad_b64", f, b).replace("\t" + b64(f), "\t" + b64(f)[:-8] + "!!!!$$$$"),  # 2
        row("g1", *good["g1"]),                                                   # 3
        row("short", f[:, :5], b),                                                # 4: 4*5 floats, not 4*8
        "cols\t1\t2\t3\n",                                                        # 5
        row("g2", *good["g2"]),                                                   # 6
        row("nb", f, b, n="4.5"),                                                 # 7
        row("g0", *good["g3"]),                                                   # 8: duplicate id
        row("boxes", f, b[:3], n=4),                                              # 9
        row("g3", *good["g3"]),                                                   # 10
        "\n",                                                                     # 11: blank, ignored
        row("g4", *good["g4"])[: -200],                                           # 12: truncated last line
    ]
    path = tmp_path / "big.tsv"
    path.write_text("".join(lines))
    for in_memory in (False, True):
        with FeatureStore.open(path, in_memory=in_memory) as store:
            assert list(store) == ["g0", "g1", "g2", "g3"]
            for k in store:
                np.testing.assert_array_equal(store[k].regions, good[k][0])
                np.testing.assert_array_equal(store[k].boxes, good[k][1])
            reasons = dict(store.skipped)
            assert [w for w, _ in store.skipped] == [f"big.tsv:{i}" for i in (2, 4, 5, 7, 8, 9, 12)]
            assert "base64" in reasons["big.tsv:2"]
            assert reasons["big.tsv:4"] == "features length 20 is not num_boxes*8 (4*8 = 32)"
            assert "expected 6 tab-separated columns, found 4" in reasons["big.tsv:5"]
            assert "num_boxes '4.5' is not an integer" in reasons["big.tsv:7"]
            assert "duplicate image id 'g0' (first on line 1)" in reasons["big.tsv:8"]
            assert "boxes length 48 bytes" in reasons["big.tsv:9"]
            with pytest.raises(MissingFeaturesError, match=r"'short' was skipped as malformed \(big.tsv:4"):
                store["short"]


def test_tsv_header_and_labels_column(tmp_path):
    recs = make_records(4)
    path = write_features(recs, tmp_path / "l.tsv")
    assert path.read_text().splitlines()[0].split("\t") == list(tsv_module.FIELDS) + ["objects_id"]
    store = FeatureStore.open(path)
    assert [tuple(s) for s in store.skipped] == []
    for k, v in recs.items():
        assert_same(store[k], v)


def test_tsv_offset_index_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    recs = make_records(6)
    path = write_features(recs, tmp_path / "c.tsv")
    FeatureStore.open(path).close()
    assert tsv_module.index_path(path).exists()

    def no_scan(*a, **k):
        raise AssertionError("the cached offset index should have been used")

    with monkeypatch.context() as m:
        m.setattr(tsv_module, "scan", no_scan)
        store = FeatureStore.open(path)
        assert_same(store["img_002"], recs["img_002"])
        store.close()
    extra = RegionFeatures(np.full((2, 8), 7.0), np.ones((2, 4)), labels=[3, 4])
    with open(path, "a") as f:  # the file changes: the stale index must not be trusted
        f.write("\t".join(["new", "0", "0", "2", b64(extra.boxes), b64(extra.regions), b64(extra.labels, "<i8")]) + "\n")
    store = FeatureStore.open(path)
    assert "new" in store and len(store) == len(recs) + 1
    assert_same(store["new"], extra)


# ----------------------------------------------------------------------------------------- npz folder
def test_truncated_and_garbage_npz_are_reported(tmp_path):
    recs = make_records(6)
    folder = write_features(recs, tmp_path / "npz", "npz")
    victim = folder / "img_002.npz"
    victim.write_bytes(victim.read_bytes()[:300])
    (folder / "junk.npz").write_bytes(b"not a zip at all")
    store = FeatureStore.open(folder, in_memory=True)
    assert "img_002" not in store and "junk" not in store and len(store) == len(recs) - 1
    where = dict(store.skipped)
    assert any("img_002.npz" in w for w in where) and any("junk.npz" in w for w in where)
    lazy = FeatureStore.open(folder)
    assert "img_002" in lazy  # listed, but reading it fails loudly, naming the file
    with pytest.raises(DatasetFormatError, match="img_002.npz"):
        lazy["img_002"]
    assert any("img_002.npz" in w for w, _ in lazy.skipped)
    assert_same(lazy["img_003"], recs["img_003"])


def test_npz_reader_is_liberal_in_key_names(tmp_path):
    rng = np.random.default_rng(3)
    feats, boxes = rng.standard_normal((10, 32)).astype(np.float32), rng.uniform(0, 9, (10, 4)).astype(np.float32)
    np.savez(tmp_path / "vqa.npz", x=feats.T, bbox=boxes, num_bbox=10, image_w=320, image_h=240)  # (d, r) as VQA dumps
    np.savez(tmp_path / "padded.npz", features=np.concatenate([feats, np.zeros((6, 32))]),
             boxes=np.concatenate([boxes, np.zeros((6, 4))]), num_boxes=10, w=320, h=0)  # 0 = unknown
    np.savez(tmp_path / "nobox.npz", feat=feats)
    store = FeatureStore.open(tmp_path, in_memory=True)
    for k in ("vqa", "padded"):
        np.testing.assert_array_equal(store[k].regions, feats)
        np.testing.assert_array_equal(store[k].boxes, boxes)
    assert (store["vqa"].image_w, store["vqa"].image_h) == (320, 240)
    assert (store["padded"].image_w, store["padded"].image_h) == (320, None)
    assert "nobox" not in store
    assert [w for w, r in store.skipped if "no boxes" in r] == ["nobox.npz"]


def test_mixed_feature_dims(tmp_path):
    recs = make_records(5)
    recs["odd"] = RegionFeatures(np.ones((3, 4)), np.ones((3, 4)))
    folder = write_features(recs, tmp_path / "mixed", "npz")
    mem = FeatureStore.open(folder, in_memory=True)
    assert "odd" not in mem and any("4-d regions but the store's features are 8-d" in r for _, r in mem.skipped)
    lazy = FeatureStore.open(folder)
    with pytest.raises(DatasetFormatError, match="4-d regions"):
        lazy["odd"]


# ----------------------------------------------------------------------------------------- HDF5 flat layout
def test_hdf5_flat_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(4)
    n, r, d = 5, 10, 16
    feats, boxes = rng.standard_normal((n, r, d)).astype(np.float32), rng.uniform(0, 99, (n, r, 4)).astype(np.float32)
    num = np.array([10, 3, 0, 7, 12])  # the last row claims more boxes than there are
    labels = rng.integers(0, 1600, (n, r))
    path = tmp_path / "flat.hdf5"
    with h5py.File(path, "w") as f:
        f["image_id"] = np.array([b"a", b"b", b"c", b"d", b"e"])
        f["features"], f["boxes"], f["num_boxes"], f["labels"] = feats, boxes, num, labels
        f["image_w"], f["image_h"] = np.full(n, 640), np.full(n, 480)
    for in_memory in (False, True):
        store = FeatureStore.open(path, in_memory=in_memory)
        assert list(store) == ["a", "b", "c", "d"] and store.feature_dim == d
        assert store.skipped == [("flat.hdf5[4]", "num_boxes 12 is outside 0..10")]
        for i, k in enumerate("abcd"):
            np.testing.assert_array_equal(store[k].regions, feats[i, :num[i]])
            np.testing.assert_array_equal(store[k].boxes, boxes[i, :num[i]])
            np.testing.assert_array_equal(store[k].labels, labels[i, :num[i]])
            assert (store[k].image_w, store[k].image_h) == (640, 480)
        assert store["c"].regions.shape == (0, d)


def test_hdf5_unknown_layout_is_a_clear_error(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(DatasetFormatError, match="neither a group per image"):
        FeatureStore.open(tmp_path / "other.h5")


# ----------------------------------------------------------------------------------------- JIT loading
@pytest.fixture(scope="module")
def big_stores(tmp_path_factory):
    """200 images x 36 regions x 2048-d (59 MB of float32) in every format."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(5)
    recs = {f"{i:012d}": RegionFeatures(rng.standard_normal((36, 2048), dtype=np.float32),
                                        rng.uniform(0, 500, (36, 4)), 640, 480) for i in range(200)}
    paths = {fmt: write_features(recs, root / name, fmt) for fmt, name in FORMATS.items()}
    return recs, paths


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_jit_loading_keeps_memory_and_cache_bounded(big_stores, fmt):
    recs, paths = big_stores
    total = sum(r.regions.nbytes + r.boxes.nbytes for r in recs.values())
    tsv_module.index_path(paths["tsv"]).unlink(missing_ok=True)  # make the TSV open do its full indexing pass
    tracemalloc.start()
    try:
        store = FeatureStore.open(paths[fmt], cache_size=16)
        checksum = 0.0
        for i, k in enumerate(store):
            checksum += float(store[k].regions[0, 0])
            assert store.cache_info()["size"] <= 16
            if i % 50 == 0:
                store[list(store)[0]]  # a re-read of an evicted id is a miss, not a leak
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    info = store.cache_info()
    assert info["capacity"] == 16 and info["size"] == 16 and info["misses"] >= 200
    assert peak < 0.25 * total, f"peak {peak / 1e6:.1f} MB while iterating {total / 1e6:.1f} MB lazily"
    assert checksum == pytest.approx(sum(float(r.regions[0, 0]) for r in recs.values()), rel=1e-6)
    store.close()
    with pytest.raises(InvalidInputError, match="closed"):
        store[list(recs)[0]]


def test_cache_hits(big_stores):
    recs, paths = big_stores
    store = FeatureStore.open(paths["hdf5"], cache_size=4)
    ids = list(store)[:3]
    first = store.get_many(ids)
    again = store.get_many(ids)
    assert all(a is b for a, b in zip(first, again))  # served from the cache
    assert store.cache_info() == {"hits": 3, "misses": 3, "size": 3, "capacity": 4}
    none = FeatureStore.open(paths["hdf5"], cache_size=0)
    none[ids[0]], none[ids[0]]
    assert none.cache_info()["size"] == 0 and none.cache_info()["misses"] == 2


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_concurrent_reads_match_sequential(big_stores, fmt):
    recs, paths = big_stores
    ids = list(recs)[:60]
    expected = {k: recs[k] for k in ids}
    store = FeatureStore.open(paths[fmt], cache_size=8, num_workers=4)
    order = ids + ids[:10]  # duplicates, in input order
    for got, k in zip(store.get_many(order), order):
        np.testing.assert_array_equal(got.regions, expected[k].regions)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        mine = ids[:]
        random.Random(seed).shuffle(mine)
        try:
            for k in mine:
                got = store[k]
                np.testing.assert_array_equal(got.regions, expected[k].regions)
                np.testing.assert_array_equal(got.boxes, expected[k].boxes)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    store.close()


_FORKED: dict = {}


def _child_read(store, image_id):
    return float(store[image_id].regions.sum())


def _child_read_inherited(image_id):
    return float(_FORKED["store"][image_id].regions.sum())


@pytest.mark.parametrize("fmt", ["tsv", "hdf5", "lmdb"])
def test_store_pickles_and_survives_fork(big_stores, fmt):
    recs, paths = big_stores
    store = FeatureStore.open(paths[fmt], cache_size=2)
    k = list(recs)[7]
    store[k]  # handles are open in the parent
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone[k].regions, recs[k].regions)
    k9 = list(recs)[9]
    _FORKED["store"] = store  # inherited by the forked child with its open handles, which it must reopen
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(_child_read_inherited, (k9,)) == pytest.approx(float(recs[k9].regions.sum()))
            assert pool.apply(_child_read, (store, k9)) == pytest.approx(float(recs[k9].regions.sum()))  # pickled
    finally:
        _FORKED.clear()
    np.testing.assert_array_equal(store[k].regions, recs[k].regions)  # the parent's handle still works


# ----------------------------------------------------------------------------------------- select / missing
def test_select_and_missing_ids(tmp_path):
    recs = make_records(8)
    path = write_features(recs, tmp_path / "s.tsv")
    store = FeatureStore.open(path, select=["img_006", "img_001", "img_006"])
    assert list(store) == ["img_001", "img_006"]  # store order, duplicates ignored
    assert "img_002" not in store
    with pytest.raises(MissingFeaturesError) as e:
        store["img_002"]
    msg = str(e.value)
    assert "'img_002'" in msg and str(path) in msg and not msg.startswith("'")
    assert isinstance(e.value, KeyError) and isinstance(e.value, XmodalError)
    assert store.get("img_002") is None
    with pytest.raises(MissingFeaturesError, match="2 image ids have no region features.*'nope'"):
        store.get_many(["img_001", "nope", "nada"])
    with pytest.raises(MissingFeaturesError, match=r"'ghost'.*s\.tsv"):
        FeatureStore.open(path, select=["img_001", "ghost"])
    mem = FeatureStore.open(path, in_memory=True, select={"img_003"})
    assert list(mem) == ["img_003"]
    assert_same(mem["img_003"], recs["img_003"])


def test_from_dict_and_describe(tmp_path):
    recs = make_records(5)
    store = FeatureStore.from_dict(recs)
    assert store.format == "memory" and store.path is None and len(store) == len(recs)
    assert store.get_many(["img_001"])[0] is recs["img_001"]
    assert store.cache_info()["size"] == len(recs)
    with pytest.raises(MissingFeaturesError, match="in-memory"):
        store["x"]
    d = describe_features(store)
    assert d["count"] == len(recs) and d["feature_dim"] == 8
    assert d["regions"]["min"] == 0 and d["regions"]["max"] == 7
    assert d["regions"]["total"] == sum(r.num_regions for r in recs.values())
    assert d["with_labels"] == sum(r.labels is not None for r in recs.values())
    assert d["boxes"]["degenerate"] == 0


def test_convert_between_formats(tmp_path):
    recs = make_records(6)
    src = write_features(recs, tmp_path / "a.h5")
    dst, skipped = convert_features(src, tmp_path / "b.lmdb", progress=False)
    assert skipped == []
    back = FeatureStore.open(dst)
    for k, v in recs.items():
        assert_same(back[k], v)


def test_unknown_paths_and_formats(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        FeatureStore.open(tmp_path / "nothing.tsv")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DatasetFormatError, match="cannot tell"):
        FeatureStore.open(tmp_path / "x.bin")
    with pytest.raises(InvalidInputError, match="unknown feature format"):
        FeatureStore.open(tmp_path / "x.bin", format="parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="neither"):
        FeatureStore.open(tmp_path / "empty")


# ----------------------------------------------------------------------------------------- extractor hook
class GridColours:
    """A trivial deterministic extractor: a 2x2 grid of cells, each region = the cell's mean RGB + its centre."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, images):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        out = []
        for img in images:
            a = np.asarray(img, dtype=np.float32) / 255.0
            h, w = a.shape[:2]
            regions, boxes = [], []
            for y0, y1 in ((0, h // 2), (h // 2, h)):
                for x0, x1 in ((0, w // 2), (w // 2, w)):
                    regions.append(np.concatenate([a[y0:y1, x0:x1].mean(axis=(0, 1)), [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h]]))
                    boxes.append([x0, y0, x1, y1])
            out.append(RegionFeatures(np.array(regions), np.array(boxes)))
        return out


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_extract_features_with_a_plugged_in_extractor(image_folder, tmp_path, fmt):
    assert isinstance(GridColours(), RegionExtractor)
    out = tmp_path / FORMATS[fmt]
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies after the first batch of 4
        extract_features(GridColours(fail_after=1), image_folder, out, fmt, batch_size=4, progress=False)
    report = extract_features(GridColours(), image_folder, out, fmt, batch_size=4, progress=False)
    # the first batch held broken.jpg + 3 images; the rerun resumes after them (12 readable images in all)
    assert report.existing == 3 and report.written == 9
    assert [p.endswith("broken.jpg") for p, _ in report.failed] == [True]
    store = FeatureStore.open(out)
    assert len(store) == 12 and store.feature_dim == 5
    rec = store["img_00_red.png"]
    assert (rec.image_w, rec.image_h) == (40, 36) and rec.num_regions == 4  # size filled in from the image
    pixels = np.asarray(Image.open(image_folder / "img_00_red.png").convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(rec.regions[3, :3], pixels[18:, 20:].mean(axis=(0, 1)), rtol=1e-6)
    assert rec.regions[3, 0] > 0.95 and rec.regions[3, 1] < 0.3  # bottom-right cell: mostly red
    np.testing.assert_array_equal(rec.boxes[3], [20, 18, 40, 36])
    assert "sub/img_11_cyan.png" in store
    store.close()  # HDF5 and LMDB files cannot be open for reading and writing at once in one process
    again = extract_features(GridColours(), image_folder, out, fmt, progress=False)
    assert again.written == 0 and again.existing == 12


def test_extract_features_checks_the_extractor_output(image_folder, tmp_path):
    with pytest.raises(InvalidInputError, match="one RegionFeatures per image"):
        extract_features(lambda imgs: [], image_folder, tmp_path / "o", progress=False)
    paths = [image_folder / "img_00_red.png", image_folder / "sub" / "img_11_cyan.png"]
    report = extract_features(GridColours(), paths, tmp_path / "o2.tsv", "tsv", progress=False)
    assert report.written == 2 and sorted(FeatureStore.open(tmp_path / "o2.tsv")) == ["img_00_red.png", "img_11_cyan.png"]


def test_tsv_resume_cuts_a_partial_last_line(image_folder, tmp_path):
    out = tmp_path / "resume.tsv"
    extract_features(GridColours(), [image_folder / "img_00_red.png"], out, "tsv", progress=False)
    with open(out, "ab") as f:
        f.write(b"img_01_green.png\t40\t36\t4\tAAAA")  # a crash in the middle of writing a row
    report = extract_features(GridColours(), [image_folder / "img_00_red.png", image_folder / "img_01_green.png"],
                              out, "tsv", progress=False)
    assert (report.existing, report.written) == (1, 1)
    store = FeatureStore.open(out)
    assert list(store) == ["img_00_red.png", "img_01_green.png"] and store.skipped == []
    assert store["img_01_green.png"].regions[3, 1] > 0.4  # green channel of a green image's cell


def test_package_exports():
    import xmodal.data as data

    assert data.FeatureStore is FeatureStore and data.RegionFeatures is RegionFeatures
    assert data.extract_features is extract_features and data.write_features is write_features
