"""The model metadata timm's and torchvision's tools read, filled from the model itself."""
from __future__ import annotations


def model_cfg(model, resolution: int, in_chans: int, num_classes: int, mean, std) -> dict:
    """`pretrained_cfg` as timm lays it out: `timm.data.resolve_data_config(model=m)` reads
    input_size, crop_pct, interpolation, mean and std from it; feature tools read first_conv and
    classifier (module names), pool_size (the last map's side at `resolution`)."""
    stride = getattr(getattr(model, "arch", None), "total_stride", 32)
    side = max(resolution // stride, 1)
    return dict(resolution=resolution, input_size=(in_chans, resolution, resolution),
                num_classes=num_classes, pool_size=(side, side), first_conv="stem.conv",
                classifier="classifier", crop_pct=0.875, mean=tuple(mean), std=tuple(std),
                in_chans=in_chans, interpolation="bilinear")
