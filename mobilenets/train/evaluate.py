"""Accuracy of a model on a data split (top-1, top-5, per class, confusion matrix) and the
`eval` verb that writes them as JSON and a confusion-matrix PNG."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from ..core.figures import new_figure, save_figure


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
    cm = torch.tensor(confusion, dtype=torch.float64)
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)
    k = len(classes)
    size = max(5.0, 0.5 * k + 2)
    fig = new_figure((size, size))
    ax = fig.subplots()
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
    save_figure(fig, path, dpi=100)
