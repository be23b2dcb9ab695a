"""What the input size allows on the scene set before any training: how many validation objects
SSDLite's anchors can reach, and the mIoU of a perfect stride-16 segmentation upsampled
bilinearly. Analytic (no model is trained); the numbers behind docs/heads.md's choice of 192 px.

    python benchmarks/scene_ceilings.py --out benchmarks/results/scene_ceilings.json

The validation scenes are made exactly as `mobilenets data scenes` makes them (same generator,
seed + 1, 128 px), in memory. For each input size the 128 px boxes and masks are scaled to it.
- Anchors: SSDLite's anchors at that size (its six feature maps); an object is "reachable" when
  some anchor overlaps its box at IoU >= 0.5, and "positives per object" counts the anchors
  `detection.match` assigns to it (IoU >= 0.5, plus its best anchor).
- Segmentation ceiling: the one-hot mask at that size, averaged over 16×16 cells (the best a
  stride-16 output can say), upsampled bilinearly back to 128 px, argmax; mIoU over the
  background and the ten classes, accumulated over all scenes.
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from mobilenets.core.io import atomic_write_text
from mobilenets.datasets.scenes import CLASSES, load_items, make_scene
from mobilenets.models.detection import match
from mobilenets.models.mobilenet import create_model

SCENE_SIZE = 128
NUM_CLASSES = len(CLASSES) + 1   # with background


def scenes(count: int, seed: int, data_dir: str | None):
    images, labels = load_items("val", data_dir)
    rng = np.random.default_rng(seed + 1)     # write_scenes' validation seed
    return [make_scene(rng, images, labels, SCENE_SIZE)[1] for _ in range(count)]


def boxes_of(items) -> torch.Tensor:
    rows = []
    for _, mask in items:
        ys, xs = np.nonzero(mask)
        rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def anchor_reach(all_items, size: int) -> dict:
    model = create_model("ssdlite_mobilenet_v2", num_classes=len(CLASSES) + 1, width_mult=0.5)
    anchors = model.anchors((size, size))
    objects = reachable = positives = 0
    for items in all_items:
        boxes = boxes_of(items) * (size / SCENE_SIZE)
        if not len(boxes):
            continue
        objects += len(boxes)
        reachable += int((box_iou(boxes, anchors).max(1).values >= 0.5).sum())
        positives += int((match(boxes, anchors) >= 0).sum())
    return {"anchors": int(anchors.shape[0]), "objects": objects,
            "reachable_fraction": reachable / objects, "positives_per_object": positives / objects}


def segmentation_ceiling(all_items, size: int, stride: int = 16) -> float:
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for items in all_items:
        index = torch.zeros(SCENE_SIZE, SCENE_SIZE, dtype=torch.long)
        for cls, mask in items:
            index[torch.from_numpy(mask)] = cls + 1
        onehot = F.one_hot(index, NUM_CLASSES).permute(2, 0, 1)[None].float()
        at_size = F.interpolate(onehot, size=(size, size), mode="nearest")
        cells = F.avg_pool2d(at_size, stride, ceil_mode=True)
        back = F.interpolate(cells, size=(SCENE_SIZE, SCENE_SIZE), mode="bilinear",
                             align_corners=False)
        predicted = back[0].argmax(0)
        confusion += torch.bincount(index.flatten() * NUM_CLASSES + predicted.flatten(),
                                    minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    tp = confusion.diag().float()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    present = union > 0
    return float((tp[present] / union[present].float()).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=500, help="validation scenes (the recipes' 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = p.parse_args()
    torch.set_num_threads(1)
    items = scenes(args.scenes, args.seed, args.data_dir)
    result = {"benchmark": "scene_ceilings", "scenes": args.scenes, "seed": args.seed,
              "scene_size": SCENE_SIZE, "torch": torch.__version__, "python": platform.python_version(),
              "sizes": {}}
    for size in args.sizes:
        result["sizes"][str(size)] = {**anchor_reach(items, size),
                                      "miou_ceiling_stride16": segmentation_ceiling(items, size),
                                      "miou_ceiling_stride8": segmentation_ceiling(items, size, 8)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
