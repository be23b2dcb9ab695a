"""The classification data a training run opens: Fashion-MNIST or an image folder, as train and
val splits that hand the trainer normalized float batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from ..core.errors import MobileNetsError
from .fashion_mnist import FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from .folders import FolderSplit, scan_folder, screen_items
from .splits import Augment, TensorSplit, epoch_order


@dataclass
class Dataset:
    name: str
    train: TensorSplit | FolderSplit
    val: TensorSplit | FolderSplit
    classes: list[str]
    in_chans: int
    resolution: int
    mean: tuple
    std: tuple

    @property
    def skipped(self) -> list[str]:
        return sorted(set(self.train.skipped) | set(self.val.skipped))

    def preprocessing(self) -> dict:
        return {"resolution": self.resolution, "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "in_chans": self.in_chans, "interpolation": "bilinear"}

    @property
    def resize(self) -> int:
        if isinstance(self.val, FolderSplit):
            return int(round(self.resolution / self.val.crop_pct))
        return self.resolution


def open_dataset(data: str, resolution: int | None, augment: Augment, data_dir: str | None = None,
                 in_chans: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                 workers: int = 0, strict: bool = False) -> Dataset:
    """`data` is "fashion-mnist" or a directory: with train/ and val/ (or test/) class folders,
    or class folders directly, split into train and val by a seeded `val_fraction`."""
    if data.lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        if in_chans not in (None, 1, 3):
            raise MobileNetsError(f"in_chans={in_chans} is not allowed for Fashion-MNIST; allowed: 1 or 3")
        t = load_fashion_mnist(data_dir)
        res = resolution or 28
        (xtr, ytr), (xte, yte) = t["train"], t["test"]
        mean, std = FMNIST_MEAN, FMNIST_STD
        if in_chans == 3:
            xtr, xte, mean, std = xtr.expand(-1, 3, -1, -1), xte.expand(-1, 3, -1, -1), mean * 3, std * 3
        return Dataset("fashion-mnist", TensorSplit(xtr, ytr, res, mean, std, augment),
                       TensorSplit(xte, yte, res, mean, std, None), list(FMNIST_CLASSES),
                       in_chans or 1, res, mean, std)

    root = Path(data)
    if not root.is_dir():
        raise MobileNetsError(f"--data {data}: neither 'fashion-mnist' nor an existing directory")
    train_dir = root / "train"
    val_dir = next((root / n for n in ("val", "validation", "test") if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train_items, classes = scan_folder(train_dir)
        val_items, _ = scan_folder(val_dir, classes)
    else:
        if not 0 < val_fraction < 1:
            raise MobileNetsError(f"val_fraction={val_fraction!r} is out of range; allowed: 0 < f < 1")
        items, classes = scan_folder(train_dir if train_dir.is_dir() else root)
        order = epoch_order(len(items), seed, -1, True).tolist()
        n_val = max(1, int(round(len(items) * val_fraction)))
        val_items = sorted((items[i] for i in order[:n_val]), key=lambda it: (it[1], str(it[0])))
        train_items = sorted((items[i] for i in order[n_val:]), key=lambda it: (it[1], str(it[0])))
    train_items, skip_tr = screen_items(train_items, strict)
    val_items, skip_val = screen_items(val_items, strict)
    if not train_items or not val_items:
        raise MobileNetsError(f"{root}: no readable images left in the {'train' if not train_items else 'val'} split")
    in_chans = in_chans or 3
    res = resolution or 224
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if in_chans == 1:
        mean, std = (0.449,), (0.226,)
    elif in_chans != 3:
        raise MobileNetsError(f"in_chans={in_chans} is not allowed for image folders; allowed: 1 or 3")
    tr = FolderSplit(train_items, res, mean, std, in_chans, augment, workers=workers, skipped=skip_tr)
    va = FolderSplit(val_items, res, mean, std, in_chans, None, workers=workers, skipped=skip_val)
    return Dataset(str(root), tr, va, classes, in_chans, res, mean, std)
