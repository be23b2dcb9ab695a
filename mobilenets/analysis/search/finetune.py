"""The short trainings a search runs many of: a fixed number of SGD steps on the training
split, then top-1 on (a seeded subset of) the held-out val split. Deterministic for a given
seed, so a proposal scored again after a resume, or on another rank, scores the same."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from ...core.errors import MobileNetsError
from ...datasets.classification import open_dataset
from ...datasets.splits import Augment
from ...train.evaluate import evaluate
from ...train.optim import train_step


def open_search_data(data: str, model: nn.Module, data_dir: str | None, val_fraction, seed: int,
                     val_images: int | None):
    """(train, val, test splits, classes) for `model`'s input size and channels. `val_fraction`
    and `seed` must be the ones the model was trained with, so that val holds only images its
    training never saw; proposals are scored on `val_images` of them (all when None)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    ds = open_dataset(data, cfg.get("resolution"), Augment(hflip=0.5, crop_padding=2), data_dir,
                      cfg.get("in_chans", 3), val_fraction, seed)
    val = ds.val
    if val is None:
        raise MobileNetsError(f"{data}: no held-out val split to score proposals on; use a val "
                              "fraction above 0 (the one the model was trained with)")
    scoring = val.subset(val_images, seed) if val_images and val_images < len(val) else val
    return ds.train, scoring, val, ds.test, ds.classes


def short_finetune(model: nn.Module, train_split, steps: int, batch: int, lr: float, seed: int,
                   epoch: int, weight_decay: float = 1e-4) -> nn.Module:
    """`steps` SGD steps (momentum 0.9, constant `lr`) on batches `epoch` of `train_split`
    deals with `seed`; the model is trained in place and returned."""
    return _sgd_steps(model, train_split, steps, batch, lr, seed, epoch, weight_decay, cosine=False)


def long_finetune(model: nn.Module, train_split, steps: int, batch: int, lr: float, seed: int,
                  epoch: int = 10_000, weight_decay: float = 1e-4, progress=None) -> nn.Module:
    """NetAdapt's final fine-tune: `steps` SGD steps with a cosine-decayed learning rate."""
    return _sgd_steps(model, train_split, steps, batch, lr, seed, epoch, weight_decay, cosine=True,
                      progress=progress)


def _sgd_steps(model, train_split, steps, batch, lr, seed, epoch, weight_decay, cosine, progress=None):
    if steps <= 0:
        return model
    torch.manual_seed(seed * 1_000_003 + epoch)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay,
                                nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    bar = progress(total=steps, desc="final fine-tune") if progress else None
    done = 0
    for e in itertools.count(epoch):
        for x, y in train_split.batches(batch, seed, e):
            train_step(model, x, y, criterion, optimizer)
            if schedule:
                schedule.step()
            done += 1
            if bar:
                bar.update(1)
            if done >= steps:
                if bar:
                    bar.close()
                return model.eval()
        if train_split.num_steps(batch) == 0:
            return model.eval()


def top1(model: nn.Module, split, classes: int, batch: int = 256) -> float:
    return evaluate(model, split, batch, num_classes=classes)["top1"]
