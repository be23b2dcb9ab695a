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

from .coco_voc import read_rgb
from .errors import MobileNetsError
from .io import atomic_write_text
from .task_metrics import denormalize, draw_detections, draw_segmentation
from .tasks import TASKS, build_task, json_safe, record_keys
from .weights import load_model, read_metadata, save_weights


def task_of(path) -> str | None:
    """"detection" or "segmentation" for a task weights file, else None (classifiers, other
    formats)."""
    task = read_metadata(path).get("task") if str(path).endswith(".safetensors") else None
    return task if task in TASKS else None


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
                        out: str | None = None, draw: int = 8, workers: int = 0,
                        flip: bool = False) -> dict:
    """Metrics of the weights file on `split` of `data` (COCO folder for detection, VOC folder
    for segmentation), with "images" (how many were scored); with `out`, writes metrics.json
    and the first `draw` predictions as PNG. `flip`: a segmenter's probabilities are averaged
    with those of the mirror image."""
    model, meta = load_task_model(path)
    pre = meta["preprocessing"]
    if flip and meta["task"] != "segmentation":
        raise MobileNetsError(f"{path}: --flip applies to classifiers and segmenters, not {meta['task']}")
    options = {"flip": True} if flip else {}
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
                 "split": split, "flip": flip, **{k: json_safe(v) if isinstance(v, dict) else v for k, v in metrics.items()}}
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


@torch.no_grad()
def predict_image(path, image_file, out_png, min_score: float = 0.3) -> dict:
    """Run the weights file on one image (resized to its resolution); draw the result over the
    image at its own size as PNG. Returns the detections (boxes in the image's own pixels) or
    the pixel count of each class present."""
    import torch.nn.functional as F
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
    picture = image.as_subclass(torch.Tensor)
    if meta["task"] == "detection":
        det = model.detect(x)[0]
        keep = det["scores"] >= min_score
        det = {"boxes": det["boxes"][keep] * torch.tensor([w / res, h / res] * 2),
               "scores": det["scores"][keep], "labels": det["labels"][keep]}
        draw_detections(picture, det, meta["classes"], out_png, min_score=min_score)
        return {"boxes": det["boxes"].tolist(), "labels": [meta["classes"][k] for k in det["labels"].tolist()],
                "scores": det["scores"].tolist()}
    logits = F.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=False)
    pred = logits.argmax(1)[0]
    draw_segmentation(picture, pred, out_png, len(meta["classes"]))
    counts = torch.bincount(pred.flatten(), minlength=len(meta["classes"]))
    return {"pixels": {meta["classes"][k]: int(n) for k, n in enumerate(counts.tolist()) if n}}

def cmd_eval(args) -> int:
    """`mobilenets eval TASK_WEIGHTS --data FOLDER`: the metrics, per-class scores, and under
    --out (default: eval/ beside the weights) metrics.json and drawn predictions."""
    if args.batch_size is not None and args.batch_size < 1:
        raise MobileNetsError(f"--batch-size {args.batch_size}: allowed: integer >= 1")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    m = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size or 16, str(out),
                            workers=args.workers, flip=args.flip)
    task = task_of(args.checkpoint)
    scores = "  ".join(f"{k} {m[k]:.4f}" for k in record_keys(task))
    how = " with flipped copies" if args.flip else ""
    print(f"{args.checkpoint} on {args.data} {args.split} ({m['images']} images{how}): {scores}")
    per_class = m["per_class_AP" if task == "detection" else "per_class_IoU"]
    print(f"  per-class {'AP' if task == 'detection' else 'IoU'}:")
    for name, value in per_class.items():
        print(f"  {name:24s} " + ("-" if value != value else f"{value:.4f}"))   # NaN: class absent
    print(f"wrote {out / 'metrics.json'} and drawn predictions {out / 'pred_*.png'}")
    return 0


def cmd_predict(args) -> int:
    """`mobilenets predict TASK_WEIGHTS IMAGE... [--out PNG or DIR]`: one line per image with
    its detections (or class shares of the pixels) and the PNG drawn; exit 0 if any worked."""
    images = [Path(f) for f in args.images]
    if args.out and len(images) == 1 and Path(args.out).suffix.lower() == ".png":
        pngs = [Path(args.out)]
    else:
        folder = Path(args.out) if args.out else Path(".")
        pngs = [folder / f"{p.stem}_pred.png" for p in images]
    results = []
    for image, png in zip(images, pngs):
        try:
            r = predict_image(args.model, image, png, min_score=args.min_score)
            results.append({"image": str(image), **r, "drawn": str(png)})
        except MobileNetsError as e:
            results.append({"image": str(image), "error": str(e).removeprefix(f"{image}: ")})
    if args.json:
        print(json.dumps(results))
    for r in results if not args.json else ():
        if "error" in r:
            print(f"{r['image']}: error: {r['error']}")
        elif "boxes" in r:
            found = ", ".join(f"{label} {score:.2f} [{', '.join(f'{v:.0f}' for v in box)}]"
                              for label, score, box in zip(r["labels"], r["scores"], r["boxes"]))
            print(f"{r['image']}: {len(r['boxes'])} objects{': ' + found if found else ''} -> {r['drawn']}")
        else:
            total = sum(r["pixels"].values())
            shares = ", ".join(f"{k} {100 * n / total:.1f}%" for k, n in
                               sorted(r["pixels"].items(), key=lambda kv: -kv[1]))
            print(f"{r['image']}: {shares} -> {r['drawn']}")
    return 0 if any("error" not in r for r in results) else 1
