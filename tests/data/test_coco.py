"""Official COCO captions JSON (images + annotations), with and without Karpathy's split file."""

from __future__ import annotations

import json

import pytest

from xmodal.data import load_dataset, read_coco_captions, write_coco_captions
from xmodal.errors import DatasetFormatError, InvalidInputError


def coco_file(path, tag="val2014", ids=(391895, 522418, 184613), with_orphan=False):
    """The field layout of captions_val2014.json: info, licenses, images[id, file_name, ...], annotations[...]."""
    images = [{"license": 3, "file_name": f"COCO_{tag}_{i:012d}.jpg", "coco_url": f"http://x/{i}.jpg", "height": 360,
               "width": 640, "date_captured": "2013-11-14 11:18:45", "id": i} for i in ids]
    if with_orphan:
        images.append({"file_name": "no_captions.jpg", "id": 1, "height": 1, "width": 1})
    anns = [{"image_id": i, "id": 1000 * n + j, "caption": f"caption {j} of image {i}"}
            for n, i in enumerate(ids) for j in range(5)]
    obj = {"info": {"description": "COCO 2014 Dataset", "year": 2014}, "licenses": [{"id": 3, "name": "x"}],
           "images": images, "annotations": anns}
    path.write_text(json.dumps(obj))
    return obj


def test_round_trip(tmp_path):
    orig = coco_file(tmp_path / "captions_val2014.json")
    ds = read_coco_captions(tmp_path / "captions_val2014.json", images_dir=tmp_path / "imgs")
    assert ds.split == "val2014" and ds.image_ids == ["391895", "522418", "184613"] and len(ds.captions) == 15
    assert ds.images["391895"] == tmp_path / "imgs" / "COCO_val2014_000000391895.jpg"
    assert ds.captions[6].caption_id == "1001" and ds.captions[6].text == "caption 1 of image 522418"
    out = write_coco_captions(ds, tmp_path / "out" / "captions.json")
    back = json.loads(out.read_text())
    assert back["images"] == orig["images"]  # every image field kept, ids stay integers
    assert sorted(back["annotations"], key=lambda a: a["id"]) == sorted(orig["annotations"], key=lambda a: a["id"])
    again = read_coco_captions(out, images_dir=tmp_path / "imgs")
    assert again.images == ds.images and again.captions == ds.captions


def test_karpathy_split_and_subfolders(tmp_path):
    coco_file(tmp_path / "captions_val2014.json", with_orphan=True)
    coco_file(tmp_path / "captions_train2014.json", "train2014", ids=(9, 25))
    (tmp_path / "images" / "val2014").mkdir(parents=True)
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000522418.jpg", "cocoid": 522418, "split": "test", "sentences": []},
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "split": "test", "sentences": []},
        {"filepath": "val2014", "filename": "COCO_val2014_000000184613.jpg", "cocoid": 184613, "split": "restval", "sentences": []},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "cocoid": 9, "split": "train", "sentences": []}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    test = read_coco_captions(tmp_path / "captions_val2014.json", tmp_path / "images", karpathy=tmp_path / "dataset_coco.json")
    assert test.split == "test" and test.image_ids == ["522418", "391895"] and len(test.captions) == 10
    assert test.images["522418"] == tmp_path / "images" / "val2014" / "COCO_val2014_000000522418.jpg"
    with pytest.raises(DatasetFormatError, match="captions_train2014.json"):  # train needs both files
        read_coco_captions(tmp_path / "captions_val2014.json", karpathy=tmp_path / "dataset_coco.json", split="train")
    spec = (f"coco:{tmp_path / 'captions_val2014.json'},{tmp_path / 'captions_train2014.json'},"
            f"karpathy={tmp_path / 'dataset_coco.json'}")
    full = load_dataset(spec, images=tmp_path / "images", split="train+restval")
    assert full.image_ids == ["184613", "9"]
    assert len(load_dataset(f"coco:{tmp_path / 'captions_val2014.json'}").images) == 3  # orphan image left out
    with pytest.raises(InvalidInputError, match="karpathy="):
        load_dataset(f"coco:{tmp_path / 'captions_val2014.json'},karpathy=")


@pytest.mark.parametrize("obj, match", [
    ({"images": []}, "'images' and 'annotations'"),
    ({"images": [{"id": 1}], "annotations": []}, "lacks 'id' or 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "id": 1, "caption": "x"}]}, "unknown image id 2"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 1, "caption": " "}]}, "empty caption"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}, "no image has a caption"),
])
def test_broken_files(tmp_path, obj, match):
    (tmp_path / "captions_x.json").write_text(json.dumps(obj))
    with pytest.raises(DatasetFormatError, match=match):
        read_coco_captions(tmp_path / "captions_x.json")
