"""The tasks one training loop runs: classification, detection and segmentation. Each holds its
data splits, the loss of a batch and its evaluation, so `train.py` drives them all the same way.

What the trainer asks of a task (`open_task(cfg)` builds one):
  name, metric         the task, and the evaluation entry that picks the best checkpoint
  classes, resolution  class names (background first for detection and segmentation), input side
  train, val           splits: len(), num_steps(batch, world), batches(batch, seed, epoch, rank,
                       world, start_step), each batch (images, targets)
  model_kwargs(cfg)    create_model options; adapt(model) once the model exists
  train_loss(model, batch) -> (loss, {name: sum over the batch's images}), under autocast
  evaluate_split(model, ...) -> metrics with "metric"; record / describe / report / save_best
                       turn them into metrics.jsonl entries, the progress line, report.json
                       entries and the best weights file
  finish(out, model, batch_size, ctx, memory_format, report) -> report.json entries that
                       complete or replace the loop's, once every epoch has run (all ranks)

`DetectionTask` and `SegmentationTask` also work on their own: `train_set` / `val_set`,
`collate`, `loss(model, batch)` -> (loss, logged values), `evaluate(model, loader)`.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..datasets.coco_voc import (IGNORE_INDEX, CocoDetection, VOCSegmentation, coco_files, collate_detection,
                       collate_segmentation, detection_transforms, segmentation_transforms)
from ..models.detection import DetectionLoss
from ..core.errors import MobileNetsError
from ..models.heads import segment_multi_scale
from . import distributed
from .metrics import coco_map, detect_dataset, iou_scores, segment_dataset
from ..datasets.classification import open_dataset
from ..datasets.folders import DatasetSplit
from ..datasets.splits import Augment, held_out, held_out_count
from .evaluate import evaluate
from ..models.weights import save_weights
from ..models.mobilenet import IMAGENET_MEAN, IMAGENET_STD, check_resolution, load_model, load_task_model
from ..models.weights import save_task_weights

TASKS = ("detection", "segmentation")
TRAIN_TASKS = ("classification", *TASKS)
# Input side when the recipe gives none: the papers' COCO (SSDLite) and VOC (DeepLab) crops.
DEFAULT_RESOLUTION = {"detection": 320, "segmentation": 512}
# The share of a detection or segmentation training split held out to pick the best epoch when
# `val_fraction` is None, as for image folders without a val/ folder.
DENSE_VAL_FRACTION = 0.1


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (for its own methods)."""
    return getattr(model, "module", model)


def kept_weights(task, out, model: nn.Module, ctx, report: dict) -> Path:
    """best.safetensors, once every rank can read it; without a val split the final model
    (`model`) is written there first, as nothing chose an epoch."""
    best_path = Path(out) / "best.safetensors"
    if task.val is None and ctx.main:
        task.save_best(best_path, model, None, report["epochs"],
                       f"mobilenets train, recipe {report['recipe']}, data {report['data']}")
    distributed.barrier(ctx)   # rank 0 has written the file every rank reads
    return best_path


def json_safe(values: dict) -> dict:
    """NaN (a class absent from the split) as null, which strict JSON readers accept."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def classifier_kwargs(cfg: dict, num_classes: int, in_chans: int) -> dict:
    """The model kwargs a classification recipe `cfg` asks for, beside its model_options."""
    kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    for key in ("width_mult", "dropout"):
        if cfg[key] is not None:
            kwargs[key] = cfg[key]
    if cfg["small_input"]:
        kwargs["small_input"] = True
    return kwargs


class ClassificationTask:
    """Image classification on Fashion-MNIST or an image folder (`data.open_dataset`): every
    epoch is scored on the val split, which picks best.safetensors; the test split is scored once,
    at the end, on best.safetensors. Without a val split (val_fraction=0) the final epoch's model
    is kept."""
    name, metric = "classification", "top1"
    record_keys = ("top1", "top5")

    def __init__(self, cfg: dict):
        ds = open_dataset(cfg["data"], cfg["resolution"], Augment.from_config(cfg), cfg["data_dir"],
                          cfg["in_chans"], cfg["val_fraction"], cfg["seed"], cfg["workers"], cfg["strict"])
        for name, limit in (("train", cfg["limit_train"]), ("val", cfg["limit_val"]), ("test", cfg["limit_test"])):
            if limit and getattr(ds, name) is not None:
                setattr(ds, name, getattr(ds, name).subset(limit, cfg["seed"]))
        self.ds, self.classes, self.data_name = ds, ds.classes, ds.name
        self.train, self.val, self.test = ds.train, ds.val, ds.test
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        self.eval_flip = cfg["eval_flip"]

    @property
    def resolution(self) -> int:
        return self.ds.resolution

    @property
    def skipped(self) -> list[str]:
        return self.ds.skipped

    @property
    def plot_keys(self) -> tuple[str, ...]:
        return ("train_top1", "val_top1") if self.val is not None else ("train_top1",)

    def model_kwargs(self, cfg: dict) -> dict:
        return classifier_kwargs(cfg, len(self.classes), self.ds.in_chans)

    def adapt(self, model: nn.Module) -> None:
        stride = model.arch.total_stride
        if self.ds.resolution < stride:
            # 28 px images through a stride-32 network: upsample to the smallest size it accepts.
            self.ds.resolution = stride
            for split in self.ds.splits.values():
                split.resolution = stride

    def preprocessing(self) -> dict:
        return self.ds.preprocessing()

    def to_device(self, batch, device: torch.device, memory_format):
        x, y = batch
        return (x.to(device, non_blocking=True, memory_format=memory_format),
                y.to(device, non_blocking=True))

    def train_loss(self, model: nn.Module, batch):
        x, y = batch
        logits = model(x)
        loss = self.criterion(logits.float(), y)
        return loss, {"correct": (logits.argmax(1) == y).sum()}

    def train_record(self, sums: dict, seen: int) -> dict:
        return {"train_top1": sums["correct"] / max(seen, 1)}

    def evaluate_split(self, model: nn.Module, batch_size: int, ctx, memory_format, amp_dtype) -> dict:
        if self.val is None:
            # Nothing to choose by: no epoch beats the loop's starting best, and `finish` keeps
            # the final model.
            return {"metric": -math.inf}
        val = evaluate(model, self.val, batch_size, ctx, len(self.classes), memory_format, amp_dtype,
                       flip=self.eval_flip)
        return {**val, "metric": val["top1"]}

    def record(self, val: dict) -> dict:
        if "top1" not in val:
            return {}
        return {"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]}

    def describe(self, record: dict) -> str:
        line = f"train loss {record['train_loss']:.4f} top1 {record['train_top1']:.4f}"
        if "val_top1" in record:
            line += (f"  val loss {record['val_loss']:.4f} top1 {record['val_top1']:.4f} "
                     f"top5 {record['val_top5']:.4f}")
        return line

    def report(self, val: dict) -> dict:
        return {"top1": val["top1"], "top5": val["top5"]} if "top1" in val else {}

    def save_best(self, path, model: nn.Module, val: dict | None, epoch: int, source: str) -> None:
        scores = {"top1": val["top1"], "top5": val["top5"]} if val else {}
        save_weights(path, model, {"classes": self.classes, "preprocessing": self.preprocessing(),
                                   **scores, "epoch": epoch, "source": source})

    def finish(self, out, model: nn.Module, batch_size: int, ctx, memory_format, report: dict) -> dict:
        """Which split each score comes from. Without a val split the final model (`model`)
        becomes best.safetensors here. The test split is scored on best.safetensors as saved:
        exactly the model the run hands on, in float32 as `mobilenets eval` scores it."""
        kept, meta = load_model(kept_weights(self, out, model, ctx, report))
        entries = {"selection": "best val_top1" if self.val is not None else "final epoch (no validation split)",
                   "val_images": len(self.val) if self.val is not None else 0,
                   "val_top1": meta.get("top1"), "val_top5": meta.get("top5"),
                   "test_images": 0, "test_top1": None, "test_top5": None}
        if self.val is None:
            entries.update({f"best_{self.metric}": None, "best_epoch": report["epochs"]})
        if self.test is not None:
            kept = kept.to(ctx.device, memory_format=memory_format)
            test = evaluate(kept, self.test, batch_size, ctx, len(self.classes), memory_format,
                            flip=self.eval_flip)
            entries.update(test_images=test["images"], test_top1=test["top1"], test_top5=test["top5"])
        # top1 / top5 (the scores `mobilenets train` prints): test's where there is a test split.
        final = "test" if self.test is not None else "val" if self.val is not None else None
        entries.update(top1=entries[f"{final}_top1"] if final else None,
                       top5=entries[f"{final}_top5"] if final else None, top1_split=final)
        return entries


class _DenseTask:
    """Trainer hooks shared by detection and segmentation, whose readers decode and augment
    item by item (`data.DatasetSplit`). Evaluation runs on every rank over the whole split.

    For training, a seeded share of the training images (`val_fraction`, default
    DENSE_VAL_FRACTION) is held out, un-augmented, as the val split that scores every epoch and
    picks best.safetensors; the annotations' own val split is the run's test split, scored once,
    at the end, on best.safetensors. With val_fraction=0 the final epoch's model is kept."""
    record_keys: tuple[str, ...] = ()
    per_class_key = ""

    @property
    def skipped(self) -> list[str]:
        return []   # the readers drop bad annotations and files when they open (one warning each)

    def for_training(self, cfg: dict) -> "_DenseTask":
        self.data_name = str(cfg["data"])
        n_val = held_out_count(cfg["val_fraction"], len(self.train_set), DENSE_VAL_FRACTION)
        train_idx, val_idx = held_out(len(self.train_set), n_val, cfg["seed"])
        held = self.train_set.select(val_idx.tolist())
        held.transforms = self.val_set.transforms
        split = partial(DatasetSplit, collate=self.collate, workers=cfg["workers"])
        self.train = split(self.train_set.select(train_idx.tolist()), augment=True)
        self.val = split(held) if n_val else None
        self.test = split(self.val_set)
        for name, limit in (("train", cfg["limit_train"]), ("val", cfg["limit_val"]), ("test", cfg["limit_test"])):
            if limit and getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).subset(limit, cfg["seed"]))
        return self

    @property
    def plot_keys(self) -> tuple[str, ...]:
        return tuple(f"val_{k}" for k in self.record_keys) if self.val is not None else ()

    def model_kwargs(self, cfg: dict) -> dict:
        kwargs = {"num_classes": self.num_classes}
        for key in ("width_mult", "dropout"):
            if cfg[key] is not None:
                kwargs[key] = cfg[key]
        return kwargs

    def adapt(self, model: nn.Module) -> None:
        check_resolution(model, self.resolution)

    def preprocessing(self) -> dict:
        return {"resolution": self.resolution, "mean": list(self.mean), "std": list(self.std), "in_chans": 3}

    def train_loss(self, model: nn.Module, batch):
        loss, logged = self.loss(model, batch)
        n = len(batch[0])
        return loss, {k: v * n for k, v in logged.items()}

    def train_record(self, sums: dict, seen: int) -> dict:
        return {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}

    def evaluate_split(self, model: nn.Module, batch_size: int, ctx, memory_format, amp_dtype) -> dict:
        if self.val is None:
            return {"metric": -math.inf}   # nothing to choose by: `finish` keeps the final model
        return self._score(model, self.val, batch_size, amp_dtype)

    def _score(self, model: nn.Module, split: DatasetSplit, batch_size: int, amp_dtype=None) -> dict:
        loader = DataLoader(split.dataset, batch_size=batch_size, collate_fn=self.collate,
                            num_workers=split.workers)
        was_training = model.training
        device = next(model.parameters()).device
        try:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                return self.evaluate(model, loader)
        finally:
            model.train(was_training)

    def record(self, val: dict) -> dict:
        return {f"val_{k}": val[k] for k in self.record_keys if k in val}

    def describe(self, record: dict) -> str:
        line = f"train loss {record['train_loss']:.4f}"
        if f"val_{self.metric}" in record:
            line += "  val " + " ".join(f"{k} {record['val_' + k]:.4f}" for k in self.record_keys)
        return line

    def report(self, val: dict) -> dict:
        if self.metric not in val:
            return {}
        return {**{k: val[k] for k in self.record_keys}, self.per_class_key: json_safe(val[self.per_class_key])}

    def finish(self, out, model: nn.Module, batch_size: int, ctx, memory_format, report: dict) -> dict:
        """As classification's: which split each score comes from, and the test split scored on
        best.safetensors as saved (the final model's, without a val split)."""
        kept, meta = load_task_model(kept_weights(self, out, model, ctx, report))
        test = self._score(kept.to(ctx.device), self.test, batch_size)
        entries = {"selection": (f"best val {self.metric} ({len(self.val)} training images held out)"
                                 if self.val is not None else "final epoch (no validation split)"),
                   "val_images": len(self.val) if self.val is not None else 0,
                   **{f"val_{k}": meta.get(k) for k in self.record_keys},
                   "test_split": self.val_split, "test_images": len(self.test),
                   **{f"test_{k}": test[k] for k in self.record_keys},
                   # The scores `mobilenets train` prints are the test split's.
                   **{k: test[k] for k in self.record_keys}, self.per_class_key: json_safe(test[self.per_class_key]),
                   f"{self.metric}_split": "test"}
        if self.val is None:
            entries.update({f"best_{self.metric}": None, "best_epoch": report["epochs"]})
        return entries

    def save_best(self, path, model: nn.Module, val: dict | None, epoch: int, source: str) -> None:
        scores = {k: val[k] for k in self.record_keys} if val else {}
        save_task_weights(path, model, self.name, self.classes, self.resolution,
                          **scores, epoch=epoch, source=source)


class DetectionTask(_DenseTask):
    name = "detection"
    metric = "AP50"
    record_keys = ("mAP", "AP50", "AP75")
    per_class_key = "per_class_AP"

    def __init__(self, data: str, resolution: int, mean, std, train_split: str | None = "train",
                 val_split: str = "val"):
        self.resolution, self.mean, self.std = resolution, tuple(mean), tuple(std)
        self.val_split = val_split
        self.train_set = CocoDetection(*coco_files(data, train_split),
                                       detection_transforms(resolution, True, mean, std)) if train_split else None
        self.val_set = CocoDetection(*coco_files(data, val_split),
                                     detection_transforms(resolution, False, mean, std))
        self.classes = (self.train_set if self.train_set is not None else self.val_set).classes
        self.num_classes = len(self.classes)      # background included, as the model counts
        self.collate = collate_detection
        self.criteria: dict[str, DetectionLoss] = {}
        self._anchors: dict[tuple, torch.Tensor] = {}

    def anchors(self, model, size) -> torch.Tensor:
        key = tuple(size)
        if key not in self._anchors:
            self._anchors[key] = _unwrap(model).anchors(key)
        return self._anchors[key]

    def to_device(self, batch, device: torch.device, memory_format):
        # Targets stay on the CPU: anchors are matched there (`detection.build_targets`).
        images, targets = batch
        return images.to(device, non_blocking=True, memory_format=memory_format), targets

    def loss(self, model, batch):
        images, targets = batch
        logits, deltas = model(images)
        plain = [{"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"]} for t in targets]
        # The loss that trains the scores the model's `detect` makes (its `classification`).
        kind = _unwrap(model).classification
        criterion = self.criteria.setdefault(kind, DetectionLoss(classification=kind))
        parts = criterion(logits.float(), deltas.float(), plain, self.anchors(model, images.shape[-2:]))
        return parts["loss"], {"box_loss": parts["box_loss"].item(), "cls_loss": parts["cls_loss"].item()}

    def evaluate(self, model, loader) -> dict:
        results = detect_dataset(model, loader)
        scores = coco_map(loader.dataset.coco, results, image_ids=loader.dataset.ids)
        return {**scores, "metric": scores[self.metric]}


class SegmentationTask(_DenseTask):
    """`scales` other than (1.0,) or `flip` evaluate with multi-scale / flipped inference (V2
    Table 7's "MF")."""
    name = "segmentation"
    metric = "mIoU"
    record_keys = ("mIoU", "pixel_accuracy")
    per_class_key = "per_class_IoU"

    def __init__(self, data: str, resolution: int, mean, std, train_split: str | None = "train",
                 val_split: str = "val", scales: tuple[float, ...] = (1.0,), flip: bool = False):
        self.resolution, self.scales, self.flip = resolution, tuple(scales), flip
        self.val_split = val_split
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_set = VOCSegmentation(data, train_split, segmentation_transforms(
            resolution, True, mean, std)) if train_split else None
        self.val_set = VOCSegmentation(data, val_split, segmentation_transforms(resolution, False, mean, std))
        self.classes = (self.train_set if self.train_set is not None else self.val_set).classes
        self.num_classes = len(self.classes)
        self.collate = collate_segmentation

    def to_device(self, batch, device: torch.device, memory_format):
        images, masks = batch
        return (images.to(device, non_blocking=True, memory_format=memory_format),
                masks.to(device, non_blocking=True))

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
    """options: `train_split` (None: open the validation split only), `val_split`, and
    SegmentationTask's `scales` and `flip`."""
    if name == "detection":
        return DetectionTask(data, resolution, mean, std, **options)
    if name == "segmentation":
        return SegmentationTask(data, resolution, mean, std, **options)
    raise MobileNetsError(f"task={name!r} is not one of {', '.join(TASKS)}")


def open_task(cfg: dict):
    """The task a validated training config names, with its data opened."""
    if cfg["task"] == "classification":
        return ClassificationTask(cfg)
    resolution = cfg["resolution"] or DEFAULT_RESOLUTION[cfg["task"]]
    return build_task(cfg["task"], str(cfg["data"]), resolution, IMAGENET_MEAN, IMAGENET_STD).for_training(cfg)


def record_keys(name: str) -> tuple[str, ...]:
    """The evaluation entries task `name` reports: top1, top5 / mAP, AP50, AP75 / mIoU, pixel_accuracy."""
    return {t.name: t.record_keys for t in (ClassificationTask, DetectionTask, SegmentationTask)}[name]
