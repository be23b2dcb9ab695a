"""Building blocks shared by every MobileNet: conv-BN-activation, squeeze-excite, and one
inverted-residual block that is V1's depthwise separable block, V2's bottleneck and V3's bneck
depending on its options."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    None: nn.Identity,
}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `v` (TF reference rule)."""
    min_value = divisor if min_value is None else min_value
    n = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if n < 0.9 * v:
        n += divisor
    return n


def make_activation(name: str | None) -> nn.Module:
    act = ACTIVATIONS[name]
    # In-place saves one activation-sized allocation per layer, which on CPU is mostly page faults.
    return act(inplace=True) if name in ("relu", "relu6", "hswish") else act()


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial dimension: (before, after). Computed from the
    input size, so a stride-2 layer pads only the bottom/right edge when the size is even."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (built with padding=0). TF-trained weights
    reproduce their outputs only with it. The padding belongs to the convolution, so the
    module is the whole layer wherever it is used alone (BN folding, channel slicing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        top, bottom = same_padding(x.shape[-2], kh, sh, dh)
        left, right = same_padding(x.shape[-1], kw, sw, dw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


class ConvBNAct(nn.Module):
    """Conv2d → BatchNorm → activation, the unit every MobileNet layer is made of: children
    `conv`, `bn`, `act`, so the state dict reads `X.conv.weight`, `X.bn.running_mean`, ... for
    every padding style. Eval mode runs the three as they are; `deploy.fuse` folds `bn` into
    `conv` for inference."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: str | None = "relu6",
                 padding: str = "symmetric", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        # A stride-1 odd kernel pads the same either way; only strided layers need TF's rule.
        if padding == "same" and stride > 1:
            self.conv = Conv2dSame(in_ch, out_ch, kernel_size, stride, 0, dilation=dilation,
                                   groups=groups, bias=False)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2 * dilation,
                                  dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = make_activation(act)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """V3's squeeze-and-excite: pool, 1×1 reduce with ReLU, 1×1 expand, h-sigmoid gate."""

    def __init__(self, channels: int, squeeze_channels: int, act: str = "relu",
                 gate: str = "hsigmoid"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = make_activation(act)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = ACTIVATIONS[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s


SHORTCUTS = ("bottleneck", "expansion", "none")


class InvertedResidual(nn.Module):
    """1×1 expansion → k×k depthwise → [squeeze-excite] → 1×1 projection, with a shortcut.

    - V2 bottleneck: expand_ch = t·in_ch, act relu6, linear projection (proj_act None).
    - V3 bneck: explicit expand_ch, act relu or hswish, optional SE, kernel 3 or 5.
    - V1 depthwise separable: expand_ch == in_ch (no expansion conv), projection with ReLU,
      shortcut "none".
    `shortcut` places the residual as in V2 Fig. 6b: "bottleneck" joins the thin block input
    and output (as published), "expansion" joins the wide tensors on either side of the
    depthwise conv, "none" removes it. A shortcut exists only where shapes allow it.
    """

    def __init__(self, in_ch: int, out_ch: int, expand_ch: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, se_ch: int = 0, act: str = "relu6",
                 proj_act: str | None = None, shortcut: str = "bottleneck",
                 padding: str = "symmetric", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is not one of {SHORTCUTS}")
        norm = dict(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.in_channels, self.out_channels, self.stride = in_ch, out_ch, stride
        self.expand = (ConvBNAct(in_ch, expand_ch, 1, act=act, **norm)
                       if expand_ch != in_ch else nn.Identity())
        self.depthwise = ConvBNAct(expand_ch, expand_ch, kernel_size, stride, groups=expand_ch,
                                   dilation=dilation, act=act, **norm)
        self.se = SqueezeExcite(expand_ch, se_ch) if se_ch else nn.Identity()
        self.project = ConvBNAct(expand_ch, out_ch, 1, act=proj_act, **norm)
        self.residual = stride == 1 and shortcut == "bottleneck" and in_ch == out_ch
        self.expansion_residual = stride == 1 and shortcut == "expansion"
        self._add_in_place = proj_act is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.expand(x)
        out = self.se(self.depthwise(wide))
        if self.expansion_residual:
            out = out + wide
        out = self.project(out)
        if self.residual:
            # A linear projection's output is saved by nothing, so adding in place is safe for
            # autograd and spares one allocation; after an activation it is saved for backward.
            out = out.add_(x) if self._add_in_place else out + x
        return out
