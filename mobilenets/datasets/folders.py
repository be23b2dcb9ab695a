"""Image folders: files decoded with PIL into 8-bit L or RGB, unreadable ones screened out with
a warning per file, and the split that loads them in a seeded DataLoader."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torchvision.transforms import v2

from ..core.errors import MobileNetsError
from .splits import Augment, auto_augment, epoch_order, num_steps, shard_steps


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def to_mode(img, in_chans: int):
    """Convert any PIL image (CMYK, palette, alpha, 16-bit, float, 1-bit) to 8-bit L or RGB."""
    from PIL import Image
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np
        a = np.asarray(img, dtype=np.float64)
        # 16-bit data (the usual source of mode I) scaled to 8 bits, not clipped at 255.
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray((a * 255.0 / top).round().clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        import numpy as np
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        img = Image.fromarray((a * 255.0 / top).round().clip(0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are shown on white, as viewers do; dropping alpha exposes junk colors.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if in_chans == 1 else "RGB")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _not_a_file(path: Path) -> str | None:
    """Why an entry with an image name is not a file to open (opening a FIFO would block)."""
    if path.is_file():
        return None
    if path.is_dir():
        return "a directory, not an image file"
    if path.is_symlink() and not path.exists():
        return "a symbolic link that loops or points nowhere"
    return "not a regular file"


def check_image(path: Path, full: bool) -> str | None:
    """Why the file cannot be used, or None. `full` decodes all pixels (catches truncation)."""
    from PIL import Image, UnidentifiedImageError
    why = _not_a_file(path)
    if why is not None:
        return why
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            if full:
                im.load()
            else:
                im.verify()
    # A decompression bomb (a small file declaring billions of pixels) is no OSError.
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable image ({_first_line(e)})"
    return None


def _skip_warning(path, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}", stacklevel=3)


class _FolderItems(torch.utils.data.Dataset):
    """One (path, label) per item; decoding failures give a ("bad", path, reason) item, which
    the collate drops."""

    def __init__(self, items, transform, in_chans: int):
        self.items, self.transform, self.in_chans = items, transform, in_chans

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                img = to_mode(im, self.in_chans)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return ("bad", str(path), _first_line(e))
        return self.transform(img), label


class _SeededItems(torch.utils.data.Dataset):
    """Item i of `epoch` computed under torch's RNG seeded by (seed, epoch, i): random
    augmentation then depends on nothing else, so resumes and ranks agree exactly."""

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF)
            return self.dataset[i]


def _seeded_loader(dataset, collate, workers: int, batch: int, seed: int, epoch: int, rank: int,
                   world: int, start_step: int, shuffle: bool, drop_last: bool):
    """A DataLoader over this rank's batches of `epoch`, from step `start_step` on."""
    order = epoch_order(len(dataset), seed, epoch, shuffle)
    steps = [idx.tolist() for idx, _ in shard_steps(order, batch, rank, world, drop_last)]
    # Its own generator: a DataLoader draws its worker seed from torch's global RNG otherwise,
    # which the model's dropout also draws from, so a resumed epoch would see other masks.
    return torch.utils.data.DataLoader(_SeededItems(dataset, seed, epoch), batch_sampler=steps[start_step:],
                                       collate_fn=collate, num_workers=workers, persistent_workers=False,
                                       generator=torch.Generator().manual_seed(seed))


def _collate(items):
    good = [it for it in items if it[0] != "bad"]
    bad = [(it[1], it[2]) for it in items if it[0] == "bad"]
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


@dataclass
class FolderSplit:
    """Images on disk in class folders, decoded per item by a DataLoader."""
    items: list                      # [(Path, label)]
    resolution: int
    mean: tuple
    std: tuple
    in_chans: int
    augment: Augment | None = None
    crop_pct: float = 0.875
    workers: int = 0
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, n: int, seed: int) -> "FolderSplit":
        idx = epoch_order(len(self), seed, -2, True)[:n].sort().values
        return replace(self, items=[self.items[i] for i in idx.tolist()])

    def num_steps(self, batch: int, world: int = 1, drop_last: bool = True) -> int:
        return num_steps(len(self), batch, world, drop_last)

    def transform(self):
        r, a = self.resolution, self.augment
        tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        if a is None:
            return v2.Compose([v2.Resize(int(round(r / self.crop_pct)), antialias=True),
                               v2.CenterCrop(r)] + tail)
        ops = [v2.RandomResizedCrop(r, scale=a.scale, antialias=True)]
        if a.hflip:
            ops.append(v2.RandomHorizontalFlip(a.hflip))
        aa = auto_augment(a.auto_augment)
        if aa is not None:
            ops.append(aa)
        ops += tail
        if a.erasing:
            ops.append(v2.RandomErasing(a.erasing, value=0))
        return v2.Compose(ops)

    def batches(self, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                start_step: int = 0, shuffle: bool = True, drop_last: bool = True):
        loader = _seeded_loader(_FolderItems(self.items, self.transform(), self.in_chans), _collate,
                                self.workers, batch, seed, epoch, rank, world, start_step,
                                shuffle and self.augment is not None, drop_last)
        for x, y, bad in loader:
            for path, reason in bad:
                if path not in self.skipped:
                    self.skipped.append(path)
                    _skip_warning(path, reason)
            if x is None:
                continue
            yield x.contiguous(memory_format=torch.channels_last), y


@dataclass
class DatasetSplit:
    """A map-style dataset whose items are read and augmented one at a time (the detection and
    segmentation readers of `coco_voc`), batched by `collate`. Its `select(indices)` gives a
    subset of the same kind."""
    dataset: torch.utils.data.Dataset
    collate: object
    augment: bool = False            # training split: shuffled; transforms are the dataset's own
    workers: int = 0
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, n: int, seed: int) -> "DatasetSplit":
        idx = epoch_order(len(self), seed, -2, True)[:n].sort().values
        return replace(self, dataset=self.dataset.select(idx.tolist()))

    def num_steps(self, batch: int, world: int = 1, drop_last: bool = True) -> int:
        return num_steps(len(self), batch, world, drop_last)

    def batches(self, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                start_step: int = 0, shuffle: bool = True, drop_last: bool = True):
        yield from _seeded_loader(self.dataset, self.collate, self.workers, batch, seed, epoch, rank,
                                  world, start_step, shuffle and self.augment, drop_last)


def scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list, list[str]]:
    if not root.is_dir():
        raise MobileNetsError(f"{root}: not a directory")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None and len(found) == 1:
        raise MobileNetsError(f"{root}: one class folder ({found[0]!r}); a classifier needs at least 2, "
                              f"as {root}/CLASS_NAME/IMAGE files")
    classes = classes or found
    if not classes:
        raise MobileNetsError(f"{root}: no class folders; expected {root}/CLASS_NAME/IMAGE files")
    extra = sorted(set(found) - set(classes))
    if extra:
        raise MobileNetsError(f"{root}: class folder {extra[0]!r} is not among the training classes")
    items = []
    for label, name in enumerate(classes):
        d = root / name
        if d.is_dir():
            # Every entry with an image name, files or not: screen_items skips (and counts) the
            # directories and broken links among them rather than losing them silently.
            items += [(p, label) for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise MobileNetsError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return items, classes


def screen_items(items: list, strict: bool) -> tuple[list, list]:
    """Drop unusable files before training. Strict mode decodes every file and fails on the
    first bad one; otherwise a header check here, and truncation is caught while loading."""
    good, skipped = [], []
    for path, label in items:
        why = check_image(path, full=strict)
        if why is None:
            good.append((path, label))
        elif strict:
            raise MobileNetsError(f"{path}: {why} (--strict: fix or remove it before training)")
        else:
            skipped.append(str(path))
            _skip_warning(path, why)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s)", stacklevel=2)
    return good, skipped
