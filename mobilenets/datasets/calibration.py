"""Images for calibrating and checking quantized models: Fashion-MNIST from the system's dataset
package, or a user's .npy array of uint8 images, preprocessed the way the model expects."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from .fashion_mnist import FMNIST_CLASSES, load_fashion_mnist
from ..core.errors import MobileNetsError
from .preprocess import transform

FASHION_MNIST_CLASSES = FMNIST_CLASSES


@functools.lru_cache(maxsize=1)
def _fashion_mnist() -> dict:
    return load_fashion_mnist(download=False)


def fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images N×1×28×28, int64 labels N) of the train or test ("t10k") split; cached, so
    callers must not modify them."""
    return _fashion_mnist()["train" if split == "train" else "test"]


def load_images(source: str, pre: dict, split: str = "train") -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, C, H, W) and labels (or None) from "fashion-mnist" or an .npy file.

    An .npy file holds uint8 images N×H×W or N×C×H×W already at the model's input size."""
    if source == "fashion-mnist":
        return fashion_mnist(split)
    path = Path(source)
    if path.suffix != ".npy":
        raise MobileNetsError(f"--data {source!r}: allowed: 'fashion-mnist' or a .npy file of uint8 images")
    if not path.is_file():
        raise MobileNetsError(f"{path}: no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise MobileNetsError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    if arr.ndim == 3:
        arr = arr[:, None]
    res = int(pre["resolution"])
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise MobileNetsError(f"{path}: holds {arr.shape[0] if arr.ndim else 0} images of shape "
                              f"{arr.shape[1:]}; needs at least one N×H×W or N×C×H×W image")
    if arr.shape[-2:] != (res, res):
        raise MobileNetsError(f"{path}: images are {arr.shape[-2]}×{arr.shape[-1]}, the model takes "
                              f"{res}×{res}")
    if arr.dtype != np.uint8:
        raise MobileNetsError(f"{path}: dtype {arr.dtype}; allowed: uint8 images (0–255)")
    return torch.from_numpy(np.ascontiguousarray(arr)), None


def preprocessed(images: torch.Tensor, pre: dict, batch: int = 256) -> torch.Tensor:
    """Apply the model's preprocessing to uint8 images, a batch at a time."""
    t = transform(pre)
    return torch.cat([t(images[i:i + batch]) for i in range(0, len(images), batch)])


def calibration_set(source: str, pre: dict, size: int, seed: int = 0) -> torch.Tensor:
    """`size` preprocessed images drawn at random (fixed seed) from the training images."""
    images, labels = load_images(source, pre, "train")
    if len(images) == 0 or size < 1:
        raise MobileNetsError(f"calibration set {source!r} is empty")
    # A random draw, not the first N: files are often sorted by class.
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:size]
    return preprocessed(images[idx], pre)
