"""A model's preprocessing (the `preprocessing` metadata of its checkpoint or export) as a
torchvision transform on batches of uint8 images."""
from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..core.errors import MobileNetsError
from ..models import weights

# The names a weights file may give (checked when it is loaded), as torchvision's modes.
INTERPOLATIONS = {name: v2.InterpolationMode(name) for name in weights.INTERPOLATIONS}


class MatchChannels(torch.nn.Module):
    """Gray images for colour models are repeated to 3 channels; colour images for gray models
    are converted with the ITU-R 601 luma weights."""

    def __init__(self, in_chans: int):
        super().__init__()
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-3]
        if c == self.in_chans:
            return x
        if c == 4:  # RGBA: drop alpha
            x, c = x[..., :3, :, :], 3
        if c == 1 and self.in_chans == 3:
            return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        if c == 3 and self.in_chans == 1:
            return TF.rgb_to_grayscale(x)
        raise ValueError(f"{c}-channel images for a {self.in_chans}-channel model")


def transform(pre: dict) -> v2.Compose:
    """uint8 images (…, C, H, W) → normalised float32 of the model's input size."""
    res = int(pre["resolution"])
    resize = int(pre.get("resize", res))
    steps: list = [MatchChannels(int(pre.get("in_chans", 3)))]
    interpolation = pre.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise MobileNetsError(f"preprocessing interpolation={interpolation!r} is refused; allowed: "
                              f"one of {', '.join(INTERPOLATIONS)}")
    steps.append(v2.Resize(resize, interpolation=INTERPOLATIONS[interpolation], antialias=True))
    steps.append(v2.CenterCrop(res))
    steps += [v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(list(pre["mean"]), list(pre["std"]))]
    return v2.Compose(steps)
