"""Seeded epoch order and sharding, augmentation settings, and the in-memory split whose batches
are augmented as whole tensors.

Every random choice of an epoch (order and augmentation) is a function of (seed, epoch, step), so
a run resumed mid-epoch sees exactly the batches the uninterrupted run would have seen, and N
distributed ranks together see exactly what one process sees on the same global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..core.errors import MobileNetsError


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


def check_val_fraction(val_fraction) -> None:
    """One line unless `val_fraction` is None, a fraction 0 <= f < 1 or a count of images >= 1."""
    v = val_fraction
    if v is None:
        return
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not number or v < 0 or (isinstance(v, float) and v >= 1):
        raise MobileNetsError(f"val_fraction={v!r} is invalid; allowed: a fraction 0 <= f < 1, a number "
                              "of images (integer >= 1), or None for the data's default")


def held_out_count(val_fraction, n: int, default) -> int:
    """How many of `n` training images `val_fraction` holds out (None: `default`); 0 for none."""
    v = default if val_fraction is None else val_fraction
    check_val_fraction(v)
    count = v if isinstance(v, int) else (max(1, int(round(n * v))) if v > 0 else 0)
    if count >= n:
        raise MobileNetsError(f"val_fraction={v!r} holds out {count} of the {n} training images; "
                              "allowed: fewer, so that some are left to train on")
    return count


def held_out(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into `n` images, each ascending: a seeded `n_val` of them held out.
    They depend on (n, n_val, seed) only, so a resumed run, every distributed rank and `eval`
    hold out the same images."""
    order = epoch_order(n, seed, -1, True)
    return order[n_val:].sort().values, order[:n_val].sort().values


def shard_steps(order: torch.Tensor, batch: int, rank: int, world: int, drop_last: bool):
    """Split an epoch's order into global batches of `batch * world`; rank r gets every world-th
    image of each, so the ranks' batches together are exactly one process's global batch."""
    g = batch * world
    n = len(order) // g * g if drop_last else len(order)
    for start in range(0, n, g):
        yield order[start:start + g][rank::world], rank


def auto_augment(name: str | None):
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


def num_steps(n: int, batch: int, world: int = 1, drop_last: bool = True) -> int:
    """Optimizer steps per epoch over `n` items at `batch` per process on `world` processes."""
    g = batch * world
    return n // g if drop_last else math.ceil(n / g)


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
            op = auto_augment(a.auto_augment)
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
