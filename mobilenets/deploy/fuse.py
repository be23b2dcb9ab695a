"""Inference form of a model: batch norm folded into the convolution before it, channels_last.

Every BatchNorm2d in a MobileNet follows a bias-free Conv2d inside a ConvBNAct, so in eval mode it
is an affine map per output channel that torch's `fuse_conv_bn_eval` moves into the conv's weight
and bias. The activation stays a separate module: eager PyTorch runs it in place, and the
compilers this project exports to (inductor, ONNX Runtime) fuse it into the conv themselves.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..core.errors import MobileNetsError
from ..models.layers import ConvBNAct


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ConvBNAct's BatchNorm2d into its Conv2d, in place; returns how many were folded.

    The model must be in eval mode: folding bakes in the running statistics."""
    if model.training:
        raise MobileNetsError("fold_batchnorm needs an eval-mode model (model.training is True); "
                              "folding bakes in the running statistics")
    folded = 0
    for unit in model.modules():
        if isinstance(unit, ConvBNAct) and isinstance(unit.bn, nn.BatchNorm2d):
            unit.conv = fuse_conv_bn_eval(unit.conv, unit.bn)
            unit.bn = nn.Identity()
            folded += 1
    return folded


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of `model` for inference: eval mode, BN folded, no gradients, channels_last weights.
    The speed path of eager inference (`mobilenets.fuse`); the model itself is left as it is.

    Feed it channels_last inputs (`x.contiguous(memory_format=torch.channels_last)`) so no layer
    has to convert layouts; NCHW inputs still give the same numbers."""
    fused = copy.deepcopy(model).eval()
    fold_batchnorm(fused)
    for p in fused.parameters():
        p.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused
