"""Training data: Fashion-MNIST held in memory as uint8 tensors, and ImageFolder-layout directories.

Both kinds hand the trainer the same thing, a `Dataset` split with a `batches(...)` method that
yields normalized float batches for one epoch. Every random choice of an epoch (order and
augmentation) is a function of (seed, epoch, step), so a run resumed mid-epoch sees exactly the
batches the uninterrupted run would have seen, and N distributed ranks together see exactly
what one process sees on the same global batch.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .errors import MobileNetsError
from .io import atomic_write_bytes

# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
FMNIST_FILES = {  # stem: MD5 of the uncompressed IDX file (Debian recompresses the .gz files)
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_GZ_MD5 = {  # upstream's checksums of its own .gz files
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12e480ee83cd310",
}
SYSTEM_FMNIST = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_places(data_dir: str | None = None) -> list[Path]:
    """Where the idx files are looked for, in order."""
    places = [data_dir, os.environ.get("MOBILENETS_DATA"), SYSTEM_FMNIST]
    out = []
    for p in places:
        if p:
            p = Path(p).expanduser()
            out += [p, p / "fashion-mnist", p / "FashionMNIST" / "raw"]
    return out


def _find_idx(stem: str, places: list[Path]) -> Path | None:
    for d in places:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _read_idx(path: Path, md5: str) -> torch.Tensor:
    raw = path.read_bytes()
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as e:
        raise MobileNetsError(f"{path}: not a readable gzip file ({e})") from None
    if hashlib.md5(data).hexdigest() != md5:
        raise MobileNetsError(f"{path}: checksum mismatch (MD5 of the IDX contents is not {md5}); "
                              "the file is damaged or not Fashion-MNIST")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def _download_fashion_mnist(dest: Path) -> bool:
    """Fetch the four files from upstream with its checksums; False when offline."""
    got = {}
    for stem, gz_md5 in FMNIST_GZ_MD5.items():
        try:
            with urllib.request.urlopen(FMNIST_URL + stem + ".gz", timeout=30) as r:
                blob = r.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return False
        if hashlib.md5(blob).hexdigest() != gz_md5:
            raise MobileNetsError(f"{FMNIST_URL}{stem}.gz: downloaded file fails upstream's MD5 {gz_md5}")
        got[stem] = blob
    for stem, blob in got.items():
        atomic_write_bytes(dest / (stem + ".gz"), blob)
    return True


def load_fashion_mnist(data_dir: str | None = None, download: bool = True) -> dict:
    """{"train": (images N×1×28×28 uint8, labels int64), "test": (...)} from the first place
    that has all four files; downloads into the first writable place when none has them."""
    places = fashion_mnist_places(data_dir)
    found = {stem: _find_idx(stem, places) for stem in FMNIST_FILES}
    if not all(found.values()) and download:
        dest = Path(data_dir or os.environ.get("MOBILENETS_DATA")
                    or Path.home() / ".cache" / "mobilenets" / "fashion-mnist")
        places.insert(0, dest)
        if not all(found.values()) and _download_fashion_mnist(dest):
            found = {stem: _find_idx(stem, [dest]) for stem in FMNIST_FILES}
    missing = [s for s, p in found.items() if p is None]
    if missing:
        searched = ", ".join(dict.fromkeys(str(p) for p in places))
        raise MobileNetsError(f"Fashion-MNIST not found ({missing[0]}[.gz] missing); searched {searched}; "
                              "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir")
    t = {stem: _read_idx(found[stem], md5) for stem, md5 in FMNIST_FILES.items()}
    return {"train": (t["train-images-idx3-ubyte"].unsqueeze(1), t["train-labels-idx1-ubyte"].long()),
            "test": (t["t10k-images-idx3-ubyte"].unsqueeze(1), t["t10k-labels-idx1-ubyte"].long())}


# ---------------------------------------------------------------------------------------------
# Shared: seeded order, augmentation settings


@dataclass
class Augment:
    """What the training split does to each image; the evaluation split does none of it."""
    hflip: float = 0.5
    crop_padding: int = 0          # tensor data: random crop after padding by this many pixels
    scale: tuple = (0.08, 1.0)     # folder data: RandomResizedCrop scale
    erasing: float = 0.0           # probability of random erasing per image
    auto_augment: str | None = None  # None, "autoaugment", "trivialaugment"

    @classmethod
    def from_config(cls, cfg: dict) -> "Augment":
        aa = cfg.get("auto_augment") or None
        if aa not in (None, "autoaugment", "trivialaugment"):
            raise MobileNetsError(f"auto_augment={aa!r} is not one of none, autoaugment, trivialaugment")
        for key in ("hflip", "erasing"):
            if not 0 <= float(cfg.get(key, 0)) <= 1:
                raise MobileNetsError(f"{key}={cfg.get(key)!r} is out of range; allowed: 0..1")
        return cls(hflip=float(cfg.get("hflip", 0.5)), crop_padding=int(cfg.get("crop_padding", 0)),
                   scale=tuple(cfg.get("scale", (0.08, 1.0))), erasing=float(cfg.get("erasing", 0.0)),
                   auto_augment=aa)


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash(tuple(keys)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, epoch)) if shuffle else torch.arange(n)


def shard_steps(order: torch.Tensor, batch: int, rank: int, world: int, drop_last: bool):
    """Split an epoch's order into global batches of `batch * world`; rank r gets every world-th
    image of each, so the ranks' batches together are exactly one process's global batch."""
    g = batch * world
    n = len(order) // g * g if drop_last else len(order)
    for start in range(0, n, g):
        yield order[start:start + g][rank::world], rank


def _auto_augment(name: str | None):
    if name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    return None


def _erase_boxes(b: int, h: int, w: int, p: float, g: torch.Generator) -> torch.Tensor:
    """Per-image random-erasing masks (area 2–33 %, aspect 0.3–3.3, as in Zhong et al.)."""
    area = torch.empty(b).uniform_(0.02, 0.33, generator=g) * h * w
    log_r = torch.empty(b).uniform_(math.log(0.3), math.log(3.3), generator=g)
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=g) * (w - ew + 1)).long()
    on = torch.rand(b, generator=g) < p
    ys, xs = torch.arange(h), torch.arange(w)
    rows = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + eh)[:, None])
    cols = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ew)[:, None])
    return (rows[:, :, None] & cols[:, None, :] & on[:, None, None])[:, None]


# ---------------------------------------------------------------------------------------------
# Splits


@dataclass
class TensorSplit:
    """Images kept in memory as one uint8 tensor; batches are augmented as whole tensors."""
    images: torch.Tensor            # N×C×H×W uint8
    labels: torch.Tensor            # N int64
    resolution: int
    mean: tuple
    std: tuple
    augment: Augment | None = None
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int) -> "TensorSplit":
        """A seeded random `n` of the images (quick runs, tests)."""
        idx = epoch_order(len(self), seed, -2, True)[:n].sort().values
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def batches(self, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                start_step: int = 0, shuffle: bool = True, drop_last: bool = True):
        order = epoch_order(len(self), seed, epoch, shuffle and self.augment is not None)
        for step, (idx, _) in enumerate(shard_steps(order, batch, rank, world, drop_last)):
            if step < start_step:
                continue
            x = self.images[idx]
            if self.augment is not None:
                # One generator for the whole global batch; this rank takes its interleaved share.
                x = self._augment(x, _generator(seed, epoch, step, 1), batch * world, rank, world)
            yield self._normalize(x), self.labels[idx]

    def num_steps(self, batch: int, world: int = 1, drop_last: bool = True) -> int:
        return num_steps(len(self), batch, world, drop_last)

    def _augment(self, x: torch.Tensor, g: torch.Generator, gb: int, rank: int, world: int):
        a = self.augment
        b, c, h, w = x.shape
        take = slice(rank, rank + world * b, world)
        if a.auto_augment:
            op = _auto_augment(a.auto_augment)
            seeds = torch.randint(0, 2**31, (gb,), generator=g)[take]
            out = []
            for img, s in zip(x, seeds.tolist()):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(s)
                    out.append(op(img))
            x = torch.stack(out)
        if a.crop_padding:
            p = a.crop_padding
            padded = F.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (gb,), generator=g)[take]
            ox = torch.randint(0, 2 * p + 1, (gb,), generator=g)[take]
            rows = (oy[:, None] + torch.arange(h))[:, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, :]
            x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
        if a.hflip:
            flip = (torch.rand(gb, generator=g) < a.hflip)[take]
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        x = self._resize(x)
        if a.erasing:
            h, w = x.shape[-2:]
            mask = _erase_boxes(gb, h, w, a.erasing, g)[take]
            # Erased pixels become the dataset mean, i.e. 0 after normalization.
            mean = torch.tensor(self.mean).view(1, -1, 1, 1) * 255
            x = torch.where(mask, mean.round().to(x.dtype), x)
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.resolution and x.shape[-2] == self.resolution:
            return x
        y = F.interpolate(x.float(), size=(self.resolution, self.resolution), mode="bilinear",
                          antialias=True, align_corners=False)
        return y.round().clamp(0, 255).to(torch.uint8)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = self._resize(x).float().div_(255)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


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


def check_image(path: Path, full: bool) -> str | None:
    """Why the file cannot be used, or None. `full` decodes all pixels (catches truncation)."""
    from PIL import Image, UnidentifiedImageError
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            if full:
                im.load()
            else:
                im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return f"unreadable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def plain_warnings() -> None:
    """Show warnings as one `warning: ...` line each (for the CLI), without source lines."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


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
        except (OSError, SyntaxError, ValueError) as e:
            return ("bad", str(path), str(e).splitlines()[0] if str(e) else type(e).__name__)
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
    return torch.utils.data.DataLoader(_SeededItems(dataset, seed, epoch), batch_sampler=steps[start_step:],
                                       collate_fn=collate, num_workers=workers, persistent_workers=False)


def num_steps(n: int, batch: int, world: int = 1, drop_last: bool = True) -> int:
    """Optimizer steps per epoch over `n` items at `batch` per process on `world` processes."""
    g = batch * world
    return n // g if drop_last else math.ceil(n / g)


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
        aa = _auto_augment(a.auto_augment)
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


def _scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list, list[str]]:
    if not root.is_dir():
        raise MobileNetsError(f"{root}: not a directory")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
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
            items += [(p, label) for p in sorted(d.rglob("*"))
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise MobileNetsError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return items, classes


def _screen(items: list, strict: bool) -> tuple[list, list]:
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


# ---------------------------------------------------------------------------------------------
# Entry point


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
        train_items, classes = _scan_folder(train_dir)
        val_items, _ = _scan_folder(val_dir, classes)
    else:
        if not 0 < val_fraction < 1:
            raise MobileNetsError(f"val_fraction={val_fraction!r} is out of range; allowed: 0 < f < 1")
        items, classes = _scan_folder(train_dir if train_dir.is_dir() else root)
        order = epoch_order(len(items), seed, -1, True).tolist()
        n_val = max(1, int(round(len(items) * val_fraction)))
        val_items = sorted((items[i] for i in order[:n_val]), key=lambda it: (it[1], str(it[0])))
        train_items = sorted((items[i] for i in order[n_val:]), key=lambda it: (it[1], str(it[0])))
    train_items, skip_tr = _screen(train_items, strict)
    val_items, skip_val = _screen(val_items, strict)
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
