"""Scores of detection and segmentation models: COCO mAP / AP50 / AP75 through pycocotools,
mean and per-class IoU from a confusion matrix, and predictions drawn on images as PNG."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..core.io import atomic_path


@torch.no_grad()
def detect_dataset(model, loader, score_threshold: float = 0.01) -> list[dict]:
    """Detections of every image of a `CocoDetection` loader, in COCO result format and in the
    image's original pixels."""
    model.eval()
    device = next(model.parameters()).device
    category_ids = loader.dataset.category_ids
    results = []
    for images, targets in loader:
        size = images.shape[-2:]
        for det, target in zip(model.detect(images.to(device), score_threshold=score_threshold), targets):
            oh, ow = target["orig_size"]
            scale = torch.tensor([ow / size[1], oh / size[0]] * 2)
            boxes = det["boxes"].float().cpu() * scale
            for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                results.append({"image_id": target["image_id"], "category_id": category_ids[label],
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "score": score})
    return results


def coco_map(coco_gt, results: list[dict], image_ids=None) -> dict:
    """{"mAP", "AP50", "AP75", "per_class_AP"} of `results` against a pycocotools COCO."""
    from pycocotools.cocoeval import COCOeval
    if not results:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0, "per_class_AP": {}}
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints as it goes
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: (IoU thresholds, recall points, classes, area ranges, max detections)
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[coco_gt.cats[cat_id]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return {"mAP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2]),
            "per_class_AP": per_class}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_scores(confusion: torch.Tensor, classes: list[str] | None = None) -> dict:
    """{"mIoU", "per_class_IoU", "pixel_accuracy"}; classes absent from both prediction and
    ground truth have no IoU and do not count in the mean."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    names = classes or [str(i) for i in range(len(iou))]
    return {"mIoU": float(iou.nanmean()), "per_class_IoU": dict(zip(names, iou.tolist())),
            "pixel_accuracy": float(tp.sum() / confusion.sum().clamp(min=1))}


@torch.no_grad()
def segment_dataset(model, loader, num_classes: int, predict=None) -> torch.Tensor:
    """Confusion matrix of a segmentation model over a `VOCSegmentation` loader; `predict`
    (model, images) -> per-class scores replaces a plain forward (e.g. multi-scale inference)."""
    model.eval()
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, masks in loader:
        images = images.to(device)
        scores = predict(model, images) if predict else model(images)
        confusion += confusion_matrix(scores.argmax(1).cpu(), masks, num_classes)
    return confusion


def _palette(n: int) -> list[tuple[int, int, int]]:
    import matplotlib
    cmap = matplotlib.colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(n)]


def _save_png(path: str | Path, image: torch.Tensor) -> None:
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


def draw_detections(image: torch.Tensor, det: dict, classes: list[str], path: str | Path,
                    min_score: float = 0.3) -> None:
    """Boxes with class and score over a uint8 (3, H, W) image, written as PNG."""
    keep = det["scores"] >= min_score
    if not keep.any():   # torchvision warns on an empty box list
        _save_png(path, image)
        return
    labels = det["labels"][keep].tolist()
    colours = _palette(len(classes))
    text = [f"{classes[k]} {s:.2f}" for k, s in zip(labels, det["scores"][keep].tolist())]
    out = draw_bounding_boxes(image, det["boxes"][keep], labels=text,
                              colors=[colours[k] for k in labels], width=2)
    _save_png(path, out)


def draw_segmentation(image: torch.Tensor, pred: torch.Tensor, path: str | Path,
                      num_classes: int, alpha: float = 0.5) -> None:
    """Predicted classes (H, W) blended over a uint8 (3, H, W) image, written as PNG."""
    masks = torch.stack([pred == k for k in range(1, num_classes)])
    out = draw_segmentation_masks(image, masks, alpha=alpha, colors=_palette(num_classes)[1:])
    _save_png(path, out)


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float images back to uint8 for drawing."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return (images * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)


__all__ = ["coco_map", "confusion_matrix", "denormalize", "detect_dataset", "draw_detections",
           "draw_segmentation", "iou_scores", "segment_dataset"]
