"""Evaluation and prediction from task weights files."""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from mobilenets import MobileNetsError, create_model
from mobilenets.datasets.scenes import CLASSES
from mobilenets.train.task_eval import evaluate_checkpoint
from mobilenets.deploy.predict import predict_image
from mobilenets.models.weights import save_task_weights
from mobilenets.models.weights import save_weights
from mobilenets.models.mobilenet import IMAGENET_MEAN, IMAGENET_STD
from mobilenets.train.tasks import build_task

# Scenes are built from Fashion-MNIST items.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_fmnist]

NAMES = ["background", *CLASSES]


@pytest.mark.parametrize("name,task,sub", [("ssdlite_mobilenet_v2", "detection", "coco"),
                                           ("deeplabv3_mobilenet_v2", "segmentation", "voc")])
def test_eval_and_predict(tmp_path, scenes, name, task, sub):
    model = create_model(name, num_classes=11, width_mult=0.35)
    ckpt = tmp_path / "w.safetensors"
    save_task_weights(ckpt, model, task, NAMES, 64)
    metrics = evaluate_checkpoint(ckpt, str(scenes / sub), out=str(tmp_path / "eval"), draw=2)
    assert 0 <= metrics["metric"] <= 1
    assert (tmp_path / "eval/metrics.json").is_file()
    assert Image.open(tmp_path / "eval/pred_001.png").size == (64, 64)
    result = predict_image(ckpt, scenes / "voc/JPEGImages/val_000000.jpg", tmp_path / "p.png", min_score=0.0)
    assert Image.open(tmp_path / "p.png").size == (64, 64)
    if task == "detection":
        assert all(label in NAMES for label in result["labels"])
        with pytest.raises(MobileNetsError, match="--flip applies to classifiers and segmenters"):
            evaluate_checkpoint(ckpt, str(scenes / sub), flip=True)
        with pytest.raises(MobileNetsError, match="--scales applies to segmenters, not detection"):
            evaluate_checkpoint(ckpt, str(scenes / sub), scales=(1.0, 1.5))
    else:
        assert sum(result["pixels"].values()) == 64 * 64
        flipped = evaluate_checkpoint(ckpt, str(scenes / sub), flip=True)
        assert flipped["images"] == metrics["images"] == 6
        assert 0 <= flipped["mIoU"] <= 1


def test_not_a_task_file(tmp_path, scenes):
    path = tmp_path / "cls.safetensors"
    save_weights(path, create_model("mobilenet_v2_035", num_classes=3))
    with pytest.raises(MobileNetsError, match="not a detection or segmentation weights file"):
        evaluate_checkpoint(path, str(scenes / "coco"))
    model = create_model("ssdlite_mobilenet_v2", num_classes=4, width_mult=0.35)
    save_task_weights(path, model, "detection", NAMES[:4], 64)
    with pytest.raises(MobileNetsError, match="has 10 classes but .* was trained for 3"):
        evaluate_checkpoint(path, str(scenes / "coco"))
    with pytest.raises(MobileNetsError, match="not a readable image"):
        (tmp_path / "bad.jpg").write_bytes(b"no")
        predict_image(path, tmp_path / "bad.jpg", tmp_path / "o.png")


def test_multi_scale_eval_averages_resized_and_mirrored_probabilities(tmp_path, scenes):
    """The mIoU with scales (1, 1.5) and flips is the one this test computes from the four
    passes' softmax, each resized back bilinearly, and its own intersection-over-union count."""
    torch.manual_seed(0)
    model = create_model("deeplabv3_mobilenet_v2", num_classes=11, width_mult=0.35)
    task = build_task("segmentation", str(scenes / "voc"), 64, IMAGENET_MEAN, IMAGENET_STD, train_split=None)
    images, _ = task.collate([task.val_set[i] for i in range(len(task.val_set))])
    with torch.no_grad():   # BN statistics of real images; untouched ones shrink every layer to one class
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = None
        model(images)
    model.eval()
    ckpt = tmp_path / "w.safetensors"
    save_task_weights(ckpt, model, "segmentation", NAMES, 64)
    got = evaluate_checkpoint(ckpt, str(scenes / "voc"), out=str(tmp_path / "eval"), draw=0,
                              flip=True, scales=(1.0, 1.5))
    inter, union = torch.zeros(11), torch.zeros(11)
    with torch.no_grad():
        for images, masks in DataLoader(task.val_set, batch_size=3, collate_fn=task.collate):
            big = F.interpolate(images, size=(95, 95), mode="bilinear", align_corners=True)  # (64-1)·1.5+1
            probs = sum(F.interpolate(model(x.flip(-1)).flip(-1) if mirrored else model(x), size=(64, 64),
                                      mode="bilinear").softmax(1)
                        for x in (images, big) for mirrored in (False, True))
            pred, valid = probs.argmax(1), masks != 255
            for c in range(11):
                p, t = (pred == c) & valid, (masks == c) & valid
                inter[c] += (p & t).sum()
                union[c] += (p | t).sum()
    present = union > 0
    assert got["mIoU"] == pytest.approx(float((inter[present] / union[present]).mean()), abs=1e-9)
    assert json.loads((tmp_path / "eval/metrics.json").read_text())["scales"] == [1.0, 1.5]
    plain = evaluate_checkpoint(ckpt, str(scenes / "voc"))
    assert got["mIoU"] != plain["mIoU"]
