"""Dataset readers on small generated files, including broken ones."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pytest
from PIL import Image

from xmodal.data import load_dataset, read_csv, read_folder, read_karpathy, read_multi30k, read_muge, read_webdataset
from xmodal.errors import DatasetFormatError, InvalidInputError


def png_bytes(colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def karpathy(tmp_path, images):
    data = {"dataset": "flickr30k", "images": images}
    (tmp_path / "ds.json").write_text(json.dumps(data))
    return tmp_path / "ds.json"


def test_karpathy_splits_and_captions(tmp_path):
    recs = [{"filename": f"{i}.jpg", "split": s, "sentences": [{"raw": f"cap {i} {j}", "sentid": 5 * i + j} for j in range(5)]}
            for i, s in enumerate(["train", "test", "test", "val", "restval"])]
    path = karpathy(tmp_path, recs)
    ds = read_karpathy(path, images_dir=tmp_path / "imgs", split="test")
    assert ds.image_ids == ["1.jpg", "2.jpg"] and len(ds.captions) == 10 and ds.name == "flickr30k"
    assert ds.images["1.jpg"] == tmp_path / "imgs" / "1.jpg" and ds.captions[0].caption_id == "5"
    assert len(read_karpathy(path, split="train+restval").images) == 2
    assert load_dataset(f"karpathy:{path}", split="val").image_ids == ["3.jpg"]


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": [{"filename": "a.jpg"}]}), "lacks"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": " "}]}]}), "no 'raw'"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": []}]}), "no images in split"),
])
def test_karpathy_broken(tmp_path, content, match):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DatasetFormatError, match=match):
        read_karpathy(tmp_path / "bad.json")


def test_csv_tsv_and_errors(tmp_path):
    (tmp_path / "p.csv").write_text('image,caption\na.jpg,"a dog, running"\na.jpg,a dog\nb.jpg,a cat\n')
    ds = read_csv(tmp_path / "p.csv")
    assert ds.image_ids == ["a.jpg", "b.jpg"] and ds.captions[0].text == "a dog, running"
    (tmp_path / "p.tsv").write_text("image\tcaption\na.jpg\tx\n")
    assert len(read_csv(tmp_path / "p.tsv").captions) == 1
    (tmp_path / "bad.csv").write_text("image,caption\na.jpg,ok\nb.jpg,\n")
    with pytest.raises(DatasetFormatError, match="bad.csv:3"):
        read_csv(tmp_path / "bad.csv")
    (tmp_path / "hdr.csv").write_text("file,text\na.jpg,x\n")
    with pytest.raises(DatasetFormatError, match="header"):
        read_csv(tmp_path / "hdr.csv")


def test_folder_with_sidecars(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("first\n\nsecond\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "no_caption.png")
    ds = read_folder(tmp_path)
    assert ds.image_ids == ["a.png"] and [c.text for c in ds.captions] == ["first", "second"]
    (tmp_path / "a.txt").write_text("\n")
    with pytest.raises(DatasetFormatError, match="empty"):
        read_folder(tmp_path)


def test_muge(tmp_path):
    (tmp_path / "imgs.tsv").write_text(f"1001\t{base64.b64encode(png_bytes()).decode()}\n1002\t{base64.b64encode(png_bytes('blue')).decode()}\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"query_id": 7, "query_text": "红色", "item_ids": [1001, 1002]}, ensure_ascii=False) + "\n")
    ds = read_muge(tmp_path / "q.jsonl", tmp_path / "imgs.tsv")
    assert ds.extra["queries"][7] == ("红色", ["1001", "1002"]) and Image.open(io.BytesIO(ds.images["1002"])).size == (8, 8)
    (tmp_path / "bad.tsv").write_text("1001\tnot-base64!!\n")
    with pytest.raises(DatasetFormatError, match="bad.tsv:1"):
        read_muge(tmp_path / "q.jsonl", tmp_path / "bad.tsv")
    (tmp_path / "q2.jsonl").write_text('{"query_id": 1, "query_text": "x", "item_ids": [5]}\n')
    with pytest.raises(DatasetFormatError, match="q2.jsonl:1"):
        read_muge(tmp_path / "q2.jsonl", tmp_path / "imgs.tsv")


def test_multi30k(tmp_path):
    (tmp_path / "images.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "test.en").write_text("a dog\na cat\n")
    (tmp_path / "test.de").write_text("ein hund\neine katze\n")
    ds = read_multi30k({"en": tmp_path / "test.en", "de": tmp_path / "test.de"}, tmp_path / "images.txt", tmp_path)
    assert len(ds.captions) == 4 and {c.lang for c in ds.captions} == {"en", "de"}
    (tmp_path / "test.fr").write_text("un chien\n")
    with pytest.raises(DatasetFormatError, match="parallel"):
        read_multi30k({"fr": tmp_path / "test.fr"}, tmp_path / "images.txt", tmp_path)


def test_webdataset(tmp_path):
    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        add(tar, "s1.jpg", png_bytes())
        add(tar, "s1.txt", b"a red square")
        add(tar, "s2.png", png_bytes("blue"))
        add(tar, "s2.json", json.dumps({"captions": ["blue", "a blue square"]}).encode())
    ds = read_webdataset(str(tmp_path / "shard-*.tar"))
    assert sorted(ds.image_ids) == ["s1", "s2"] and len(ds.captions) == 3
    with tarfile.open(tmp_path / "bad-000.tar", "w") as tar:
        add(tar, "s3.jpg", png_bytes())
    with pytest.raises(DatasetFormatError, match="no caption"):
        read_webdataset([str(tmp_path / "bad-000.tar")])
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(DatasetFormatError, match="not a readable tar"):
        read_webdataset([str(tmp_path / "junk.tar")])


def test_load_dataset_rejects_unknown_format():
    with pytest.raises(InvalidInputError, match="FORMAT:PATH"):
        load_dataset("parquet:x")


# ---- issue 19: one-line errors instead of tracebacks, before anything is encoded
@pytest.mark.parametrize("record, match", [
    ({"filename": "a.jpg", "sentences": 5}, "sentences must be a non-empty list"),
    ({"filename": "a.jpg", "sentences": []}, "sentences must be a non-empty list"),
    ({"filename": 17, "sentences": [{"raw": "a cat"}]}, "filename must be a file name"),
    ({"filename": "a.jpg", "filepath": 3, "sentences": [{"raw": "a cat"}]}, "filepath must be text"),
])
def test_karpathy_bad_field_types_are_one_line_errors(tmp_path, record, match):
    path = karpathy(tmp_path, [record])
    with pytest.raises(DatasetFormatError, match=match):
        read_karpathy(path, split="test")


def test_karpathy_latin1_file_is_a_format_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_bytes('{"images": [{"filename": "caf\u00e9.jpg", "sentences": [{"raw": "x"}]}]}'.encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_karpathy(path)


def test_csv_with_utf8_bom_is_accepted(tmp_path):
    (tmp_path / "pairs.csv").write_bytes("image,caption\na.png,a red square\n".encode("utf-8-sig"))
    ds = read_csv(tmp_path / "pairs.csv")
    assert ds.image_ids == ["a.png"] and ds.captions[0].text == "a red square"


def test_csv_latin1_is_a_format_error(tmp_path):
    (tmp_path / "pairs.csv").write_bytes("image,caption\nb.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_csv(tmp_path / "pairs.csv")


def _tar(path, members, fmt=tarfile.PAX_FORMAT, mode="w"):
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_webdataset_members_starting_with_dot_slash(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("./s1.jpg", png_bytes()), ("./s1.txt", b"a red square"),
                                      ("./sub/s2.png", png_bytes("blue")), ("./sub/s2.txt", b"blue")])
    ds = read_webdataset([shard])
    assert ds.image_ids == ["s1", "sub/s2"] and [c.text for c in ds.captions] == ["a red square", "blue"]


def test_webdataset_images_stay_on_disk_and_keys_follow_webdataset(tmp_path):
    from xmodal.data import open_image
    from xmodal.data.shards import TarMember

    shard = _tar(tmp_path / "s.tar", [("a.b.jpg", png_bytes("green")), ("a.b.txt", b"green")])
    ds = read_webdataset([shard])
    assert ds.image_ids == ["a"]  # webdataset's key: up to the first dot of the name
    src = ds.images["a"]
    assert isinstance(src, TarMember)  # not the bytes: the shard is not held in memory
    assert open_image(src).getpixel((0, 0)) == (0, 128, 0)
    gz = _tar(tmp_path / "s.tar.gz", [("x.png", png_bytes("blue")), ("x.txt", b"blue")], mode="w:gz")
    ds = read_webdataset([gz])  # compressed shards: offsets are not file offsets, so the bytes are kept
    assert open_image(ds.images["x"]).getpixel((0, 0)) == (0, 0, 255)


def test_webdataset_keys_are_the_same_for_the_encoder(tmp_path):
    from xmodal.data.shards import iter_samples
    from xmodal.distributed.encode import Shard, _samples

    shard = _tar(tmp_path / "s.tar", [("./k.1.jpg", png_bytes()), ("./k.1.txt", b"red"), ("./m.png", png_bytes())])
    assert [sid for sid, _, _ in _samples(Shard(name="s", tar=shard))] == ["k", "m"] == [
        s["__key__"] for s in iter_samples(shard)]
    assert read_webdataset([_tar(tmp_path / "t.tar", [("./k.1.jpg", png_bytes()), ("./k.1.txt", b"red")])]).image_ids == ["k"]
