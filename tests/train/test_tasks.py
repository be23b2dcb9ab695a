"""Detection and segmentation tasks learn on a handful of real scenes and evaluate end to end."""
import pytest
import torch
from torch.utils.data import DataLoader

from mobilenets import MobileNetsError, create_model
from mobilenets.datasets.scenes import write_scenes
from mobilenets.train.tasks import build_task

# Scenes are built from Fashion-MNIST items.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_fmnist]

STEPS = 12


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, train=8, val=4, size=64, seed=5, progress=False)
    return root


def _fit(task_name, model_name, data, steps=STEPS, evaluate_on_train=False):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=11, width_mult=0.35)
    cfg = model.pretrained_cfg
    task = build_task(task_name, str(data), 64, cfg["mean"], cfg["std"])
    task.train_set.transforms = task.val_set.transforms   # a fixed batch: the loss must fall
    batch = next(iter(DataLoader(task.train_set, batch_size=8, collate_fn=task.collate)))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    evaluated = task.train_set if evaluate_on_train else task.val_set
    metrics = task.evaluate(model, DataLoader(evaluated, batch_size=4, collate_fn=task.collate))
    return losses, metrics


@pytest.mark.slow
def test_detection_learns(scenes):
    losses, metrics = _fit("detection", "ssdlite_mobilenet_v2", scenes / "coco")
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3])
    assert {"mAP", "AP50", "AP75", "per_class_AP"} <= set(metrics)
    assert 0 <= metrics["metric"] == metrics["AP50"] <= 1


@pytest.mark.slow
def test_detector_fits_its_training_scenes(scenes):
    # Model, loss, post-processing and COCO evaluation together: memorising 8 scenes must
    # show up as training-set AP.
    _, metrics = _fit("detection", "ssdlite_mobilenet_v2", scenes / "coco", steps=100,
                      evaluate_on_train=True)
    assert metrics["AP50"] > 0.5          # 0.70 here; an untrained detector scores ~0


def test_segmentation_learns(scenes):
    losses, metrics = _fit("segmentation", "lraspp_mobilenet_v3_large", scenes / "voc")
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3])
    assert metrics["metric"] == metrics["mIoU"]
    assert metrics["per_class_IoU"]["background"] > 0.5


def test_segmentation_multi_scale_evaluation(scenes):
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", num_classes=11, width_mult=0.35)
    torch.nn.init.normal_(model.low_classifier.weight)   # predictions that vary over the image
    cfg = model.pretrained_cfg
    plain = build_task("segmentation", str(scenes / "voc"), 64, cfg["mean"], cfg["std"])
    mf = build_task("segmentation", str(scenes / "voc"), 64, cfg["mean"], cfg["std"],
                    scales=(0.75, 1.0), flip=True)
    loader = DataLoader(plain.val_set, batch_size=4, collate_fn=plain.collate)
    a, b = plain.evaluate(model, loader), mf.evaluate(model, loader)
    assert 0 <= b["mIoU"] <= 1 and a["per_class_IoU"].keys() == b["per_class_IoU"].keys()
    assert a["pixel_accuracy"] != b["pixel_accuracy"]      # a different prediction was scored


def test_unknown_task(scenes):
    with pytest.raises(MobileNetsError, match="task='pose'"):
        build_task("pose", str(scenes), 64, (0,), (1,))


def test_detection_oracle_scores_one(scenes):
    """Ground truth encoded against the anchors and decoded by the detector's post-processing
    scores AP 1: anchors, coding, NMS, coordinates and COCO ids all line up."""
    from mobilenets.models.detection import build_targets, postprocess
    from mobilenets.train.metrics import coco_map
    model = create_model("ssdlite_mobilenet_v2", num_classes=11, width_mult=0.35)
    task = build_task("detection", str(scenes / "coco"), 64, (0.5,) * 3, (0.25,) * 3)
    anchors = model.anchors((64, 64))
    results = []
    for images, targets in DataLoader(task.val_set, batch_size=4, collate_fn=task.collate):
        plain = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]
        labels, regress = build_targets(plain, anchors)
        logits = torch.nn.functional.one_hot(labels, 11).float() * 20
        for det, t in zip(postprocess(logits, regress, anchors, (64, 64)), targets):
            for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": t["image_id"], "category_id": task.val_set.category_ids[label],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    scores = coco_map(task.val_set.coco, results, task.val_set.ids)
    assert scores["mAP"] == pytest.approx(1.0) and scores["AP50"] == pytest.approx(1.0)
