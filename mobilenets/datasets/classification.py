"""The classification data a training run opens: Fashion-MNIST or an image folder, as train,
val and test splits that hand the trainer normalized float batches.

`val` is what training looks at: every epoch is scored on it and the best epoch is kept. `test`
is scored once, at the end, on the kept model. Where the data has no val split of its own
(Fashion-MNIST, a folder with train/ and test/ only, class folders alone), val is a seeded share
of the training images, held out of training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from ..core.errors import MobileNetsError
from .fashion_mnist import FMNIST_CLASSES, FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from .folders import FolderSplit, scan_folder, screen_items
from .splits import Augment, TensorSplit, held_out, held_out_count

# Held out of the training images when `val_fraction` is None: a count (Fashion-MNIST: 5,000 of
# its 60,000, the size of MNIST's customary validation set) or a fraction (image folders).
FMNIST_VAL_IMAGES = 5000
FOLDER_VAL_FRACTION = 0.1
VAL_FOLDERS = ("val", "validation")


@dataclass
class Dataset:
    name: str
    train: TensorSplit | FolderSplit
    val: TensorSplit | FolderSplit | None    # None: no validation split (val_fraction=0)
    classes: list[str]
    in_chans: int
    resolution: int
    mean: tuple
    std: tuple
    test: TensorSplit | FolderSplit | None = None

    @property
    def splits(self) -> dict:
        """The splits the data has, by name."""
        return {k: s for k, s in (("train", self.train), ("val", self.val), ("test", self.test))
                if s is not None}

    @property
    def skipped(self) -> list[str]:
        return sorted(set().union(*(s.skipped for s in self.splits.values())))

    def preprocessing(self) -> dict:
        return {"resolution": self.resolution, "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "in_chans": self.in_chans, "interpolation": "bilinear"}

    @property
    def resize(self) -> int:
        if isinstance(self.train, FolderSplit):
            return int(round(self.resolution / self.train.crop_pct))
        return self.resolution


def _is_fashion_mnist(data: str) -> bool:
    return data.lower() in ("fashion-mnist", "fashion_mnist", "fmnist")


def val_held_out_beside_test(data: str) -> bool:
    """Whether `data` has a test split and a val split held out of its training images:
    Fashion-MNIST, and folders with train/ and test/ but no val/ (or validation/)."""
    if _is_fashion_mnist(data):
        return True
    root = Path(data)
    return ((root / "train").is_dir() and (root / "test").is_dir()
            and not any((root / n).is_dir() for n in VAL_FOLDERS))


def _by_class(item) -> tuple:
    return item[1], str(item[0])


def open_dataset(data: str, resolution: int | None, augment: Augment, data_dir: str | None = None,
                 in_chans: int | None = None, val_fraction: float | int | None = None, seed: int = 0,
                 workers: int = 0, strict: bool = False) -> Dataset:
    """`data` is "fashion-mnist" or a directory:
    - Fashion-MNIST: val held out of the 60,000 training images, test the 10,000 test images;
    - train/ and val/ (or validation/) class folders: those, and test/ as test when present;
    - train/ and test/: val held out of train/;
    - class folders directly (or train/ alone): val held out of them, no test.
    `val_fraction` says how much is held out: a fraction 0 <= f < 1 of the training images, a
    number of images (integer >= 1), 0 for none (val is then None), or None for the data's
    default (FMNIST_VAL_IMAGES, FOLDER_VAL_FRACTION). Which images are held out depends only
    on `seed` and the number of training images."""
    if _is_fashion_mnist(data):
        if in_chans not in (None, 1, 3):
            raise MobileNetsError(f"in_chans={in_chans} is not allowed for Fashion-MNIST; allowed: 1 or 3")
        t = load_fashion_mnist(data_dir)
        res = resolution or 28
        (xtr, ytr), (xte, yte) = t["train"], t["test"]
        train_idx, val_idx = held_out(len(ytr), held_out_count(val_fraction, len(ytr), FMNIST_VAL_IMAGES), seed)
        mean, std = FMNIST_MEAN, FMNIST_STD
        if in_chans == 3:
            mean, std = mean * 3, std * 3

        def split(x, y, aug):
            return TensorSplit(x if in_chans != 3 else x.expand(-1, 3, -1, -1), y, res, mean, std, aug)
        val = split(xtr[val_idx], ytr[val_idx], None) if len(val_idx) else None
        return Dataset("fashion-mnist", split(xtr[train_idx], ytr[train_idx], augment), val,
                       list(FMNIST_CLASSES), in_chans or 1, res, mean, std, test=split(xte, yte, None))

    root = Path(data)
    if not root.is_dir():
        raise MobileNetsError(f"--data {data}: neither 'fashion-mnist' nor an existing directory")
    train_dir = root / "train"
    nested = train_dir.is_dir()
    val_dir = next((root / n for n in VAL_FOLDERS if (root / n).is_dir()), None) if nested else None
    test_dir = root / "test" if nested and (root / "test").is_dir() else None
    train_items, classes = scan_folder(train_dir if nested else root)
    if val_dir is not None:
        val_items, _ = scan_folder(val_dir, classes)
    else:
        n_val = held_out_count(val_fraction, len(train_items), FOLDER_VAL_FRACTION)
        train_idx, val_idx = held_out(len(train_items), n_val, seed)
        val_items = sorted((train_items[i] for i in val_idx.tolist()), key=_by_class)
        train_items = sorted((train_items[i] for i in train_idx.tolist()), key=_by_class)
    test_items = scan_folder(test_dir, classes)[0] if test_dir is not None else []
    lists = {"train": train_items, "val": val_items, "test": test_items}
    screened = {}
    for name, items in lists.items():
        screened[name] = screen_items(items, strict)
        if items and not screened[name][0]:
            raise MobileNetsError(f"{root}: no readable images left in the {name} split")
    in_chans = in_chans or 3
    res = resolution or 224
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if in_chans == 1:
        mean, std = (0.449,), (0.226,)
    elif in_chans != 3:
        raise MobileNetsError(f"in_chans={in_chans} is not allowed for image folders; allowed: 1 or 3")

    def split(name, aug):
        items, skipped = screened[name]
        return FolderSplit(items, res, mean, std, in_chans, aug, workers=workers, skipped=skipped) if items else None
    return Dataset(str(root), split("train", augment), split("val", None), classes, in_chans, res, mean, std,
                   test=split("test", None))
