"""COCO mAP through pycocotools, IoU from confusion matrices, and drawn predictions."""
import json

import pytest
import torch
from PIL import Image

from mobilenets.datasets.coco_voc import CocoDetection, coco_files
from mobilenets.datasets.scenes import write_scenes
from mobilenets.train.metrics import (coco_map, confusion_matrix, draw_detections, draw_segmentation, iou_scores)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, train=0, val=6, size=64, seed=1, progress=False)
    return CocoDetection(*coco_files(root / "coco", "val"))


def _as_results(ds, shift=0.0):
    out = []
    for ann in ds.coco.anns.values():
        x, y, w, h = ann["bbox"]
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                    "bbox": [x + shift * w, y, w, h], "score": 0.9})
    return out


@pytest.mark.needs_fmnist
def test_map_of_ground_truth_is_one(coco):
    scores = coco_map(coco.coco, _as_results(coco))
    assert scores["mAP"] == pytest.approx(1.0) and scores["AP50"] == pytest.approx(1.0)
    present = {coco.coco.cats[a["category_id"]]["name"] for a in coco.coco.anns.values()}
    assert all(scores["per_class_AP"][n] == pytest.approx(1.0) for n in present)


@pytest.mark.needs_fmnist
def test_shifted_boxes_pass_ap50_fail_ap75(coco):
    # shifting by 0.25 of the width gives IoU 0.75 / 1.25 = 0.6
    scores = coco_map(coco.coco, _as_results(coco, shift=0.25))
    assert scores["AP50"] == pytest.approx(1.0) and scores["AP75"] == 0.0
    assert coco_map(coco.coco, [])["mAP"] == 0.0


def test_iou_from_confusion():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = iou_scores(cm, ["bg", "a", "b", "absent"])
    assert s["per_class_IoU"]["bg"] == pytest.approx(2 / 4)
    assert s["per_class_IoU"]["a"] == pytest.approx(2 / 3)
    assert s["per_class_IoU"]["b"] == pytest.approx(1 / 2)
    assert s["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)   # "absent" has no IoU
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)


def test_drawings(tmp_path):
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    det = {"boxes": torch.tensor([[5., 5, 20, 30], [1, 1, 3, 3]]), "scores": torch.tensor([0.9, 0.1]),
           "labels": torch.tensor([1, 2])}
    draw_detections(image, det, ["background", "a", "b"], tmp_path / "d.png")
    drawn = torch.tensor(list(Image.open(tmp_path / "d.png").getdata())).reshape(40, 50, 3)
    assert drawn[5, 10].sum() > 0 and drawn[1, 1].sum() == 0   # the 0.1 box is below min_score
    pred = torch.zeros(40, 50, dtype=torch.long)
    pred[10:20, 10:20] = 2
    draw_segmentation(image, pred, tmp_path / "s.png", num_classes=3)
    seg = torch.tensor(list(Image.open(tmp_path / "s.png").getdata())).reshape(40, 50, 3)
    assert seg[15, 15].sum() > 0 and seg[30, 30].sum() == 0
    assert json.dumps(iou_scores(confusion_matrix(pred, pred, 3)))  # serialisable for reports
