"""Evaluation and prediction from a detection or segmentation weights file: what the `eval` and
`predict` verbs do when the file's metadata says `"task": "detection" | "segmentation"`
(`task_of` tells; `cmd_eval` and `cmd_predict` are the verbs' task halves).

A task weights file is a `mobilenets.weights` file whose metadata also holds "task"; its
"classes" list starts with "background" and "preprocessing" gives resolution, mean and std.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..core.errors import MobileNetsError
from ..core.io import atomic_write_text
from ..models.mobilenet import load_task_model
from .metrics import denormalize, draw_detections, draw_segmentation
from .tasks import build_task, json_safe


def evaluate_checkpoint(path, data: str, split: str = "val", batch_size: int = 16,
                        out: str | None = None, draw: int = 8, workers: int = 0,
                        flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> dict:
    """Metrics of the weights file on `split` of `data` (COCO folder for detection, VOC folder
    for segmentation), with "images" (how many were scored); with `out`, writes metrics.json
    and the first `draw` predictions as PNG. A segmenter's probabilities can be averaged over
    its mirror images (`flip`) and over inputs resized by `scales` (the V2 paper's multi-scale
    inference)."""
    model, meta = load_task_model(path)
    pre = meta["preprocessing"]
    scales = tuple(scales)
    if (flip or scales != (1.0,)) and meta["task"] != "segmentation":
        what = "--flip applies to classifiers and segmenters" if flip else "--scales applies to segmenters"
        raise MobileNetsError(f"{path}: {what}, not {meta['task']}")
    options = {"flip": flip, "scales": scales} if meta["task"] == "segmentation" else {}
    task = build_task(meta["task"], data, pre["resolution"], pre["mean"], pre["std"],
                      train_split=None, val_split=split, **options)
    if len(task.classes) != len(meta["classes"]):
        raise MobileNetsError(f"{data}: has {len(task.classes) - 1} classes but {path} was trained "
                              f"for {len(meta['classes']) - 1}")
    dataset = task.val_set
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=task.collate, num_workers=workers)
    metrics = {**task.evaluate(model, loader), "images": len(dataset)}
    if out:
        out = Path(out)
        saved = {"checkpoint": str(path), "model": meta.get("model"), "task": meta["task"], "data": str(data),
                 "split": split, "flip": flip, "scales": list(scales), **{k: json_safe(v) if isinstance(v, dict) else v for k, v in metrics.items()}}
        atomic_write_text(out / "metrics.json", json.dumps(saved, indent=2) + "\n")
        if len(dataset) and draw:
            images, _ = next(iter(DataLoader(dataset, batch_size=draw, collate_fn=task.collate)))
            _draw_batch(model, meta, images, [out / f"pred_{i:03d}.png" for i in range(len(images))])
    return metrics


@torch.no_grad()
def _draw_batch(model, meta, images: torch.Tensor, paths: list[Path], min_score: float = 0.3) -> None:
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

