"""Evaluation and prediction from a detection or segmentation weights file: what the `eval` and
`predict` verbs do when the file's metadata says `"task": "detection" | "segmentation"`.

A task weights file is a `mobilenets.weights` file whose metadata also holds "task"; its
"classes" list starts with "background" and "preprocessing" gives resolution, mean and std.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .coco_voc import read_rgb
from .errors import MobileNetsError
from .io import atomic_write_text
from .task_metrics import denormalize, draw_detections, draw_segmentation
from .tasks import build_task
from .weights import load_model, save_weights


def save_task_weights(path, model, task: str, classes: list[str], resolution: int, **extra) -> None:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    save_weights(path, model, {"task": task, "classes": list(classes),
                               "preprocessing": {"resolution": resolution, "mean": list(cfg["mean"]),
                                                 "std": list(cfg["std"]),
                                                 "in_chans": cfg.get("in_chans", 3)},
                               **extra})


def load_task_model(path) -> tuple[torch.nn.Module, dict]:
    model, meta = load_model(path)
    if meta.get("task") not in ("detection", "segmentation"):
        raise MobileNetsError(f"{path}: not a detection or segmentation weights file "
                              "(no 'task' in its metadata)")
    return model.eval(), meta


def evaluate_checkpoint(path, data: str, split: str = "val", batch_size: int = 16,
                        out: str | None = None, draw: int = 8) -> dict:
    """Metrics of the weights file on `split` of `data` (COCO folder for detection, VOC folder
    for segmentation); with `out`, writes metrics.json and the first `draw` predictions as PNG."""
    model, meta = load_task_model(path)
    pre = meta["preprocessing"]
    task = build_task(meta["task"], data, pre["resolution"], pre["mean"], pre["std"])
    if len(task.classes) != len(meta["classes"]):
        raise MobileNetsError(f"{data}: has {len(task.classes) - 1} classes but {path} was trained "
                              f"for {len(meta['classes']) - 1}")
    dataset = task.val_set if split == "val" else task.train_set
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate)
    metrics = task.evaluate(model, loader)
    if out:
        out = Path(out)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        images, _ = next(iter(DataLoader(dataset, batch_size=draw, collate_fn=task.collate)))
        _draw_batch(model, meta, images, [out / f"pred_{i:03d}.png" for i in range(len(images))])
    return metrics


@torch.no_grad()
def _draw_batch(model, meta, images: torch.Tensor, paths: list[Path], min_score: float = 0.3) -> list:
    pre = meta["preprocessing"]
    pictures = denormalize(images, pre["mean"], pre["std"])
    if meta["task"] == "detection":
        results = model.detect(images)
        for picture, det, p in zip(pictures, results, paths):
            draw_detections(picture, det, meta["classes"], p, min_score=min_score)
    else:
        results = model(images).argmax(1)
        for picture, pred, p in zip(pictures, results, paths):
            draw_segmentation(picture, pred, p, len(meta["classes"]))
    return list(results)


def predict_image(path, image_file, out_png, min_score: float = 0.3) -> dict:
    """Run the weights file on one image (resized to its resolution); draw the result as PNG.
    Returns the detections (boxes in the image's own pixels) or class pixel counts."""
    from torchvision.transforms import v2
    model, meta = load_task_model(path)
    pre = meta["preprocessing"]
    try:
        image = read_rgb(Path(image_file))
    except (OSError, ValueError) as e:
        raise MobileNetsError(f"{image_file}: not a readable image ({e})") from None
    h, w = image.shape[-2:]
    res = pre["resolution"]
    x = v2.Compose([v2.Resize((res, res), antialias=True), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(pre["mean"], pre["std"])])(image)[None]
    result = _draw_batch(model, meta, x, [Path(out_png)], min_score)[0]
    if meta["task"] == "detection":
        keep = result["scores"] >= min_score
        scale = torch.tensor([w / res, h / res] * 2)
        return {"boxes": (result["boxes"][keep] * scale).tolist(),
                "labels": [meta["classes"][k] for k in result["labels"][keep].tolist()],
                "scores": result["scores"][keep].tolist()}
    counts = torch.bincount(result.flatten(), minlength=len(meta["classes"]))
    return {"pixels": {meta["classes"][k]: int(n) for k, n in enumerate(counts.tolist()) if n}}
