"""Detection and segmentation as tasks a training loop can run: each holds its data sets, batch
collation, loss and evaluation, so the classification trainer drives them unchanged.

A task is built from a data folder (COCO for detection, VOC-style for segmentation) and the
model's preprocessing; `loss(model, batch)` returns (loss, logged values), `evaluate(model,
loader)` a metrics dict whose `metric` entry picks the best checkpoint.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .coco_voc import (IGNORE_INDEX, CocoDetection, VOCSegmentation, coco_files, collate_detection,
                       collate_segmentation, detection_transforms, segmentation_transforms)
from .detection import DetectionLoss
from .errors import MobileNetsError
from .heads import segment_multi_scale
from .task_metrics import coco_map, detect_dataset, iou_scores, segment_dataset

TASKS = ("detection", "segmentation")


class DetectionTask:
    name = "detection"
    metric = "AP50"

    def __init__(self, data: str, resolution: int, mean, std, train_split: str = "train",
                 val_split: str = "val"):
        self.resolution = resolution
        self.train_set = CocoDetection(*coco_files(data, train_split),
                                       detection_transforms(resolution, True, mean, std))
        self.val_set = CocoDetection(*coco_files(data, val_split),
                                     detection_transforms(resolution, False, mean, std))
        self.classes = self.train_set.classes
        self.num_classes = len(self.classes)      # background included, as the model counts
        self.collate = collate_detection
        self.criterion = DetectionLoss()
        self._anchors: dict[tuple, torch.Tensor] = {}

    def anchors(self, model, size) -> torch.Tensor:
        key = tuple(size)
        if key not in self._anchors:
            self._anchors[key] = model.anchors(key)
        return self._anchors[key]

    def loss(self, model, batch):
        images, targets = batch
        logits, deltas = model(images)
        plain = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]
        parts = self.criterion(logits.float(), deltas.float(), plain, self.anchors(model, images.shape[-2:]))
        return parts["loss"], {"box_loss": parts["box_loss"].item(), "cls_loss": parts["cls_loss"].item()}

    def evaluate(self, model, loader) -> dict:
        results = detect_dataset(model, loader)
        scores = coco_map(loader.dataset.coco, results, image_ids=loader.dataset.ids)
        return {**scores, "metric": scores[self.metric]}


class SegmentationTask:
    """`scales` other than (1.0,) or `flip` evaluate with multi-scale / flipped inference (V2
    Table 7's "MF")."""
    name = "segmentation"
    metric = "mIoU"

    def __init__(self, data: str, resolution: int, mean, std, train_split: str = "train",
                 val_split: str = "val", scales: tuple[float, ...] = (1.0,), flip: bool = False):
        self.resolution, self.scales, self.flip = resolution, tuple(scales), flip
        self.train_set = VOCSegmentation(data, train_split, segmentation_transforms(resolution, True, mean, std))
        self.val_set = VOCSegmentation(data, val_split, segmentation_transforms(resolution, False, mean, std))
        self.classes = self.train_set.classes
        self.num_classes = len(self.classes)
        self.collate = collate_segmentation

    def loss(self, model, batch):
        images, masks = batch
        loss = F.cross_entropy(model(images).float(), masks, ignore_index=IGNORE_INDEX)
        return loss, {}

    def evaluate(self, model, loader) -> dict:
        predict = None
        if self.scales != (1.0,) or self.flip:
            predict = partial(segment_multi_scale, scales=self.scales, flip=self.flip)
        scores = iou_scores(segment_dataset(model, loader, self.num_classes, predict), self.classes)
        return {**scores, "metric": scores[self.metric]}


def build_task(name: str, data: str, resolution: int, mean, std, **options):
    """options: SegmentationTask's `scales` and `flip`."""
    if name == "detection":
        return DetectionTask(data, resolution, mean, std)
    if name == "segmentation":
        return SegmentationTask(data, resolution, mean, std, **options)
    raise MobileNetsError(f"task={name!r} is not one of {', '.join(TASKS)}")
