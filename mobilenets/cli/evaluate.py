"""`mobilenets eval`: a classifier's accuracy, or a detector's / segmenter's COCO mAP / mIoU."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..datasets.classification import open_dataset
from ..core.errors import MobileNetsError
from ..core.io import atomic_write_text
from ..models.mobilenet import load_model
from ..models.weights import task_of
from ..train.evaluate import evaluate, plot_confusion
from ..train.tasks import record_keys
from ..train.task_eval import evaluate_checkpoint
from .common import count_or_fraction, scale_list


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion matrix of a "
                                     "classifier; COCO mAP or mIoU of a detector / segmenter")
    p.add_argument("checkpoint", help="a .safetensors file written by `mobilenets train`")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory; "
                                                           "a COCO / VOC folder for a detector / segmenter")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (classifiers), 16")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--val-fraction", type=count_or_fraction, default=None, metavar="F_OR_N",
                   help="classifier on --split val without a val/ folder (Fashion-MNIST, class "
                        "folders): the training run's val_fraction, which held those images out "
                        "(default: the data's, 5000 for Fashion-MNIST, 0.1 for folders)")
    p.add_argument("--seed", type=int, default=0,
                   help="classifier on --split val without a val/ folder: the training run's seed, "
                        "which chose the held-out images")
    p.add_argument("--flip", action="store_true",
                   help="classifiers and segmenters: average the probabilities of each image and "
                        "its mirror image")
    p.add_argument("--scales", type=scale_list, default=(1.0,), metavar="S1,S2,…",
                   help="segmenters: average the probabilities over the inputs resized by these "
                        "factors (multi-scale inference; with --flip, the V2 paper's MF), e.g. 1,1.5")
    p.add_argument("--split", default=None,
                   help="the split scored: a classifier's test or val (default: test where the data "
                        "has one, else val); a detector's / segmenter's annotation split (default val)")
    p.add_argument("--out", default=None, help="directory for eval.json and confusion_matrix.png "
                                              "(default: beside the checkpoint); detector / segmenter: "
                                              "metrics.json and drawn predictions (default: eval/ beside it)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    if task_of(args.checkpoint):
        return _eval_task(args)
    if args.scales != (1.0,):
        raise MobileNetsError(f"{args.checkpoint}: --scales applies to segmenters, not to a classifier")
    args.batch_size = 256 if args.batch_size is None else args.batch_size
    if args.batch_size < 1:
        raise MobileNetsError(f"--batch-size {args.batch_size}: allowed: integer >= 1")
    model, meta = load_model(args.checkpoint)
    pre = meta.get("preprocessing") or {}
    ds = open_dataset(args.data, pre.get("resolution"), None, args.data_dir, pre.get("in_chans"),
                      args.val_fraction, args.seed, args.workers)
    split = args.split or ("test" if ds.test is not None else "val")
    if split not in ("test", "val") or split not in ds.splits:
        raise MobileNetsError(f"--split {split}: {args.data} has the splits {', '.join(ds.splits)}; "
                              "a classifier is scored on test or val")
    classes = meta.get("classes") or ds.classes
    if list(classes) != list(ds.classes):
        raise MobileNetsError(f"{args.checkpoint}: its classes ({', '.join(classes[:3])}, …) are not "
                              f"those of {args.data} ({', '.join(ds.classes[:3])}, …)")
    model = model.to(memory_format=torch.channels_last)
    r = evaluate(model, ds.splits[split], args.batch_size, num_classes=len(classes), flip=args.flip)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(args.checkpoint), "model": meta.get("model"), "data": ds.name, "split": split,
              "flip": args.flip, "images": r["images"], "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
              "per_class": dict(zip(classes, r["per_class"])), "confusion": r["confusion"],
              "skipped_files": len(ds.skipped)}
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    plot_confusion(r["confusion"], classes, out / "confusion_matrix.png",
                   f"{meta.get('model')} on {Path(ds.name).name} {split}: top-1 {r['top1']:.4f}")
    how = " with flipped copies" if args.flip else ""
    print(f"{args.checkpoint} on {ds.name} {split} ({r['images']} images{how}): top-1 {r['top1']:.4f}  "
          f"top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
    for name, acc in zip(classes, r["per_class"]):
        print(f"  {name:24s} {acc:.4f}")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion_matrix.png'}")
    return 0


def _eval_task(args) -> int:
    """`mobilenets eval TASK_WEIGHTS --data FOLDER`: the metrics, per-class scores, and under
    --out (default: eval/ beside the weights) metrics.json and drawn predictions."""
    if args.batch_size is not None and args.batch_size < 1:
        raise MobileNetsError(f"--batch-size {args.batch_size}: allowed: integer >= 1")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    args.split = args.split or "val"
    m = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size or 16, str(out),
                            workers=args.workers, flip=args.flip, scales=args.scales)
    task = task_of(args.checkpoint)
    scores = "  ".join(f"{k} {m[k]:.4f}" for k in record_keys(task))
    how = " with flipped copies" if args.flip else ""
    if args.scales != (1.0,):
        how += f" at scales {', '.join(f'{s:g}' for s in args.scales)}"
    print(f"{args.checkpoint} on {args.data} {args.split} ({m['images']} images{how}): {scores}")
    per_class = m["per_class_AP" if task == "detection" else "per_class_IoU"]
    print(f"  per-class {'AP' if task == 'detection' else 'IoU'}:")
    for name, value in per_class.items():
        print(f"  {name:24s} " + ("-" if value != value else f"{value:.4f}"))   # NaN: class absent
    print(f"wrote {out / 'metrics.json'} and drawn predictions {out / 'pred_*.png'}")
    return 0
