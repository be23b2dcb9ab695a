"""`data scenes` and the COCO / VOC readers, on scenes built from the real Fashion-MNIST files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from mobilenets import MobileNetsError
from mobilenets.cli import main
from mobilenets.datasets.coco_voc import (CocoDetection, VOCSegmentation, coco_files, collate_detection, detection_transforms, read_json, segmentation_transforms)
from mobilenets.datasets.scenes import CLASSES, write_scenes

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.mark.needs_fmnist
def test_boxes_and_masks_are_exact(scenes):
    doc = json.loads((scenes / "coco/annotations/instances_train.json").read_text())
    assert len(doc["images"]) == 12 and [c["name"] for c in doc["categories"]] == list(CLASSES)
    assert len(doc["annotations"]) >= 12
    by_image = {}
    for ann in doc["annotations"]:
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == m.sum() > 0
        by_image.setdefault(ann["image_id"], []).append((ann["category_id"], m))
    for info in doc["images"]:
        name = info["file_name"].split("/")[1].replace(".jpg", "")
        index = np.asarray(Image.open(scenes / "voc/SegmentationClass" / f"{name}.png"))
        expected = np.zeros((64, 64), np.uint8)
        for cat, m in by_image.get(info["id"], []):
            assert not expected[m].any()          # visible masks do not overlap
            expected[m] = cat
        np.testing.assert_array_equal(index, expected)


@pytest.mark.needs_fmnist
def test_same_seed_same_scenes(scenes, scene_args, tmp_path):
    write_scenes(tmp_path, **scene_args, progress=False)
    for rel in ("coco/annotations/instances_train.json", "voc/SegmentationClass/val_000003.png",
                "coco/images/train/train_000011.jpg"):
        assert (tmp_path / rel).read_bytes() == (scenes / rel).read_bytes()


@pytest.mark.needs_fmnist
def test_cli_scenes(tmp_path, capsys):
    assert main(["data", "scenes", "--out", str(tmp_path), "--train", "2", "--val", "1",
                 "--size", "48"]) == 0
    assert "train: 2 images" in capsys.readouterr().out
    assert (tmp_path / "voc/ImageSets/Segmentation/val.txt").read_text() == "val_000000\n"
    assert main(["data", "scenes", "--out", str(tmp_path), "--size", "8"]) == 2


@pytest.mark.needs_fmnist
def test_readers_and_augmentation(scenes):
    ds = CocoDetection(*coco_files(scenes / "coco", "train"), detection_transforms(48, True, MEAN, STD))
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_detection)))
    assert images.shape == (4, 3, 48, 48) and images.dtype == torch.float32
    for t in targets:
        b = t["boxes"]
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all() and b.min() >= 0 and b.max() <= 48
        assert len(t["labels"]) == len(b) and t["labels"].min() >= 1
    seg = VOCSegmentation(scenes / "voc", "val", segmentation_transforms(48, True, MEAN, STD))
    image, mask = seg[0]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert set(mask.unique().tolist()) <= set(range(11))
    assert seg.classes[0] == "background" and seg.classes[1:] == list(CLASSES)


@pytest.mark.needs_fmnist
def test_flip_moves_boxes_with_pixels(scenes):
    from torchvision.transforms import v2
    raw = CocoDetection(*coco_files(scenes / "coco", "train"))
    image, target = raw[0]
    flipped, ft = v2.RandomHorizontalFlip(p=1)(image, target)
    w = image.shape[-1]
    expected = target["boxes"].clone()
    expected[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    torch.testing.assert_close(ft["boxes"].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))


def _write_coco(tmp_path, annotations, images=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "images/a.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "images/b.jpg")
    doc = {"images": images or [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                                {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30}],
           "annotations": annotations,
           "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_bad_boxes_dropped_with_count(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [30, 20, 20, 20]},    # clipped
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [5, 5, 0, 4]},        # zero area
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [50, 40, 5, 5]},      # outside
            {"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]        # unknown id
    with pytest.warns(UserWarning, match=r"dropped 3 of 5 boxes \(1 zero-area, 1 outside the image, "
                                         r"1 unknown category id\)"):
        ds = CocoDetection(_write_coco(tmp_path, anns), tmp_path / "images")
    image, target = ds[0]
    assert target["boxes"].tolist() == [[2, 3, 12, 11], [30, 20, 40, 30]]
    assert target["labels"].tolist() == [1, 2] and ds.classes == ["background", "cat", "dog"]
    assert ds.category_ids == [0, 5, 9]
    # the image without annotations stays, with no boxes, and passes the transforms
    ds.transforms = detection_transforms(32, True, MEAN, STD)
    _, empty = ds[1]
    assert len(ds) == 2 and empty["boxes"].shape == (0, 4)


def test_malformed_json_one_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(MobileNetsError, match=r"bad.json:2: malformed JSON") as e:
        read_json(path)
    assert "\n" not in str(e.value)
    with pytest.raises(MobileNetsError, match="not a COCO annotation file"):
        path.write_text("[1, 2]")
        CocoDetection(path, tmp_path)


@pytest.mark.needs_fmnist
def test_voc_mask_size_mismatch_skipped(scenes, tmp_path):
    import shutil
    root = tmp_path / "voc"
    shutil.copytree(scenes / "voc", root)
    Image.new("P", (10, 10)).save(root / "SegmentationClass/val_000001.png")
    with pytest.warns(UserWarning, match=r"skipped 1 images, mask size differs from image \(first: val_000001"):
        seg = VOCSegmentation(root, "val")
    assert len(seg) == 5                   # of the 6 validation scenes


def test_annotations_pycocotools_cannot_index_are_dropped(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8]},
            {"image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8]},                 # no id
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [2, 3, 10, 8]},        # no such image
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [1, 1, 4, 4], "iscrowd": 1},
            "not an object"]
    with pytest.warns(UserWarning, match=r"dropped 3 of 5 boxes \(1 unknown image id, 2 malformed\)"):
        ds = CocoDetection(_write_coco(tmp_path, anns), tmp_path / "images")
    # the crowd region is not a training box (COCOeval ignores it too); its image stays
    assert [ds[i][1]["boxes"].shape[0] for i in range(len(ds))] == [1, 0]


@pytest.mark.parametrize("images, match", [
    ([{"id": 1, "file_name": "a.jpg", "width": 40}], r"ann.json: images\[0\] has no 'height'"),
    ([{"file_name": "a.jpg", "width": 40, "height": 30}], r"ann.json: images\[0\] has no 'id'"),
])
def test_image_entries_without_required_keys_one_line(tmp_path, images, match):
    with pytest.raises(MobileNetsError, match=match) as e:
        CocoDetection(_write_coco(tmp_path, [], images), tmp_path / "images")
    assert "\n" not in str(e.value)


def test_unreadable_image_files_skipped_with_count(tmp_path):
    path = _write_coco(tmp_path, [{"id": 1, "image_id": 2, "category_id": 5, "bbox": [2, 3, 10, 8]}])
    (tmp_path / "images/a.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 images whose files are missing or unreadable .*first: a\.jpg"):
        ds = CocoDetection(path, tmp_path / "images")
    assert ds.ids == [2] and ds[0][1]["boxes"].shape == (1, 4)


@pytest.mark.needs_fmnist
def test_voc_masks_with_unknown_classes_or_colours(scenes, tmp_path):
    import shutil
    root = tmp_path / "voc"
    shutil.copytree(scenes / "voc", root)
    k = len((root / "classes.txt").read_text().splitlines())       # 11 classes
    mask = np.array(Image.open(root / "SegmentationClass/val_000000.png"))
    mask[:4, :4] = 40                                                # no class 40
    Image.fromarray(mask, "L").save(root / "SegmentationClass/val_000000.png")
    Image.new("RGB", (64, 64), (128, 0, 0)).save(root / "SegmentationClass/val_000001.png")
    with pytest.warns(UserWarning) as caught:
        seg = VOCSegmentation(root, "val")
    text = " | ".join(str(w.message) for w in caught)
    assert "skipped 1 images, mask is not an index image (first: val_000001 (mode RGB))" in text
    assert f"1 masks hold class indices beyond the {k} classes (first: val_000000)" in text
    assert len(seg) == 5                   # of the 6 validation scenes
    _, target = seg[0]
    assert (target[:4, :4] == 255).all() and target.max() == 255 and target[target != 255].max() < k
