"""Where a segmenter's mistakes lie: on object outlines, or inside objects (the wrong class for a
whole item). Tells apart the levers that sharpen outlines (output stride 8, larger input) from
those that recognise items better (a stronger backbone, longer training).

    python benchmarks/segmentation_errors.py benchmarks/results/accuracy/segmentation-256px.safetensors \\
        --data runs/scenes/voc --out benchmarks/results/accuracy/segmentation-256px-errors.json

The ground-truth mask at the model's input size is split into an edge band (pixels within
`radius` pixels, in the max norm, of a pixel of another class) and the interior (the rest);
the summary gives mIoU and pixel accuracy over all pixels, over the interior only and over the
band only, for each radius, and the interior's confusion matrix (rows: true class, each row a
share) at the largest radius, where outlines cannot be the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.datasets.coco_voc import IGNORE_INDEX  # noqa: E402
from mobilenets.models.mobilenet import load_task_model  # noqa: E402
from mobilenets.train.metrics import confusion_matrix, iou_scores  # noqa: E402
from mobilenets.train.tasks import build_task  # noqa: E402


def edge_band(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool: pixels with a pixel of another label within `radius` (max norm). Void
    pixels count as a label of their own, and the image border is no edge."""
    m = masks.float().unsqueeze(1)
    k = 2 * radius + 1
    padded = F.pad(m, (radius,) * 4, mode="replicate")
    high = F.max_pool2d(padded, k, 1)
    low = -F.max_pool2d(-padded, k, 1)
    return (high != low).squeeze(1)


@torch.no_grad()
def error_split(model, loader, num_classes: int, radii: tuple[int, ...]) -> dict:
    """Confusion matrices over all pixels and, per radius, over the band and the interior."""
    model.eval()
    parts = ["all", *(f"band{r}" for r in radii), *(f"interior{r}" for r in radii)]
    out = {part: torch.zeros(num_classes, num_classes, dtype=torch.int64) for part in parts}
    for images, masks in loader:
        pred = model(images).argmax(1)
        out["all"] += confusion_matrix(pred, masks, num_classes)
        for r in radii:
            band = edge_band(masks, r)
            out[f"band{r}"] += confusion_matrix(pred, masks.masked_fill(~band, IGNORE_INDEX), num_classes)
            out[f"interior{r}"] += confusion_matrix(pred, masks.masked_fill(band, IGNORE_INDEX), num_classes)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", help="a segmentation .safetensors file")
    ap.add_argument("--data", default="runs/scenes/voc", help="a VOC folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--radii", default="3,6", help="edge band half-widths in input pixels")
    ap.add_argument("--out", type=Path, required=True, help="the JSON summary")
    args = ap.parse_args(argv)
    radii = tuple(int(r) for r in args.radii.split(","))
    model, meta = load_task_model(args.weights)
    pre = meta["preprocessing"]
    task = build_task("segmentation", args.data, pre["resolution"], pre["mean"], pre["std"],
                      train_split=None, val_split=args.split)
    loader = DataLoader(task.val_set, batch_size=16, collate_fn=task.collate)
    confusions = error_split(model, loader, len(task.classes), radii)
    parts = {}
    for name, c in confusions.items():
        s = iou_scores(c, task.classes)
        parts[name] = {"pixels": int(c.sum()), "mIoU": s["mIoU"], "pixel_accuracy": s["pixel_accuracy"],
                       "per_class_IoU": s["per_class_IoU"]}
    inside = confusions[f"interior{max(radii)}"].double()
    shares = inside / inside.sum(1, keepdim=True).clamp(min=1)
    summary = {"weights": str(args.weights), "data": args.data, "split": args.split, "images": len(task.val_set),
               "resolution": pre["resolution"], "radii": list(radii), "parts": parts,
               f"interior{max(radii)}_confusion_shares": {
                   t: {p: round(v, 4) for p, v in zip(task.classes, row)} for t, row in zip(task.classes, shares.tolist())}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(summary, indent=1) + "\n")
    print(f"{'pixels':>12} {'part':>10} {'mIoU':>7} {'pixel acc':>9}")
    for name, p in parts.items():
        print(f"{p['pixels']:>12} {name:>10} {p['mIoU']:7.4f} {p['pixel_accuracy']:9.4f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
