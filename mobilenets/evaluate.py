"""Accuracy of a model on a data split (top-1, top-5, per class, confusion matrix) and the
`eval` verb that writes them as JSON and a confusion-matrix PNG."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .errors import MobileNetsError
from .io import atomic_path, atomic_write_text


@torch.no_grad()
def evaluate(model: torch.nn.Module, split, batch: int, ctx=None, num_classes: int | None = None,
             memory_format=torch.channels_last, amp_dtype=None, flip: bool = False) -> dict:
    """Top-1/top-5 (fractions), mean cross-entropy and the confusion matrix (rows: true class).
    `flip`: each image's class probabilities are the mean of it and its mirror image's (for
    models trained with horizontal flips). Under torchrun each rank evaluates every world-th
    image and the counts are summed."""
    ctx = ctx or distributed.Context()
    was_training = model.training
    model.eval()
    dev = ctx.device
    k = num_classes
    confusion = torch.zeros(k, k, dtype=torch.float64, device=dev)
    sums = torch.zeros(2, dtype=torch.float64, device=dev)  # loss sum, top-5 hits
    try:
        for x, y in split.batches(batch, 0, 0, ctx.rank, ctx.world, shuffle=False, drop_last=False):
            x = x.to(dev, memory_format=memory_format)
            y = y.to(dev)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x).float()
                if flip:
                    # log of the mean probability: cross-entropy and top-k then read it as logits
                    mirrored = model(x.flip(-1)).float()
                    logits = (torch.logaddexp(logits.log_softmax(1), mirrored.log_softmax(1))
                              - math.log(2))
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            top = logits.topk(min(5, k), 1).indices
            sums[1] += (top == y[:, None]).any(1).sum()
            confusion.index_put_((y, top[:, 0]), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    finally:
        model.train(was_training)
    distributed.all_reduce_sum(confusion, ctx)
    distributed.all_reduce_sum(sums, ctx)
    confusion = confusion.cpu().long()
    n = int(confusion.sum())
    per_class_n = confusion.sum(1)
    per_class = (confusion.diag().double() / per_class_n.clamp(min=1)).tolist()
    return {"top1": float(confusion.diag().sum()) / max(n, 1), "top5": float(sums[1]) / max(n, 1),
            "loss": float(sums[0]) / max(n, 1), "images": n, "per_class": per_class,
            "confusion": confusion.tolist()}


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = torch.tensor(confusion, dtype=torch.float64)
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)
    k = len(classes)
    size = max(5.0, 0.5 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90)
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion matrix of a "
                                     "classifier; COCO mAP or mIoU of a detector / segmenter")
    p.add_argument("checkpoint", help="a .safetensors file written by `mobilenets train`")
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory; "
                                                           "a COCO / VOC folder for a detector / segmenter")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (classifiers), 16")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="for a folder without train/val: the seeded fraction held out in training")
    p.add_argument("--seed", type=int, default=0, help="the training run's seed (for the split)")
    p.add_argument("--flip", action="store_true",
                   help="classifiers and segmenters: average the probabilities of each image and "
                        "its mirror image")
    p.add_argument("--split", default="val", help="detector / segmenter: the annotation split scored")
    p.add_argument("--out", default=None, help="directory for eval.json and confusion_matrix.png "
                                              "(default: beside the checkpoint); detector / segmenter: "
                                              "metrics.json and drawn predictions (default: eval/ beside it)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from .data import open_dataset, plain_warnings
    from .runtime import tune_allocator
    plain_warnings()
    from .task_inference import cmd_eval, task_of
    from .weights import load_model
    tune_allocator()
    if task_of(args.checkpoint):
        return cmd_eval(args)
    args.batch_size = 256 if args.batch_size is None else args.batch_size
    if args.batch_size < 1:
        raise MobileNetsError(f"--batch-size {args.batch_size}: allowed: integer >= 1")
    model, meta = load_model(args.checkpoint)
    pre = meta.get("preprocessing") or {}
    ds = open_dataset(args.data, pre.get("resolution"), None, args.data_dir, pre.get("in_chans"),
                      args.val_fraction, args.seed, args.workers)
    classes = meta.get("classes") or ds.classes
    if list(classes) != list(ds.classes):
        raise MobileNetsError(f"{args.checkpoint}: its classes ({', '.join(classes[:3])}, …) are not "
                              f"those of {args.data} ({', '.join(ds.classes[:3])}, …)")
    model = model.to(memory_format=torch.channels_last)
    r = evaluate(model, ds.val, args.batch_size, num_classes=len(classes), flip=args.flip)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(args.checkpoint), "model": meta.get("model"), "data": ds.name,
              "flip": args.flip, "images": r["images"], "top1": r["top1"], "top5": r["top5"], "loss": r["loss"],
              "per_class": dict(zip(classes, r["per_class"])), "confusion": r["confusion"],
              "skipped_files": len(ds.skipped)}
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2) + "\n")
    plot_confusion(r["confusion"], classes, out / "confusion_matrix.png",
                   f"{meta.get('model')} on {Path(ds.name).name}: top-1 {r['top1']:.4f}")
    how = " with flipped copies" if args.flip else ""
    print(f"{args.checkpoint} on {ds.name} ({r['images']} images{how}): top-1 {r['top1']:.4f}  "
          f"top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
    for name, acc in zip(classes, r["per_class"]):
        print(f"  {name:24s} {acc:.4f}")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion_matrix.png'}")
    return 0
