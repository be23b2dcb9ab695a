"""Building blocks shared by every MobileNet: conv-BN-activation, squeeze-excite, and one
inverted-residual block that is V1's depthwise separable block, V2's bottleneck, V3's bneck and
V4's universal inverted bottleneck (UIB) and fused IB depending on its options; beside it, V4's
layer scale and Mobile MQA attention block."""

# Annotations stay types, not strings (no `from __future__ import annotations`): TorchScript
# reads them, also in the code torchvision's FX feature extractor generates from these forwards.
import math

import torch
import torch.nn.functional as F
from torch import nn

from .specs import SHORTCUTS

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
    "gelu": nn.GELU,   # MobileNetV4 Hybrid-L
    None: nn.Identity,
}


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




class InvertedResidual(nn.Module):
    """[k×k depthwise] → 1×1 (or k×k fused) expansion → [k×k depthwise] → [squeeze-excite] →
    1×1 projection → [layer scale], with a shortcut.

    - V2 bottleneck: expand_ch = t·in_ch, act relu6, linear projection (proj_act None).
    - V3 bneck: explicit expand_ch, act relu or hswish, optional SE, kernel 3 or 5.
    - V1 depthwise separable: expand_ch == in_ch (no expansion conv), projection with ReLU,
      shortcut "none".
    - V4 universal inverted bottleneck (UIB): `start_kernel` adds a depthwise conv (BN, no
      activation) before the expansion, `kernel_size` 0 drops the one after it. Start / middle
      kernels give the paper's four instances: IB (0, k), ConvNext-like (k, 0), ExtraDW (k, k),
      FFN (0, 0). The stride goes to the middle depthwise conv, else to the start one.
    - V4 fused IB: `expand_kernel` > 1 makes the expansion a full k×k conv carrying the stride,
      with no depthwise conv (kernel_size 0).
    `shortcut` places the residual as in V2 Fig. 6b: "bottleneck" joins the thin block input
    and output (as published), "expansion" joins the wide tensors on either side of the
    depthwise conv, "none" removes it. A shortcut exists only where shapes allow it.
    `layer_scale` > 0 scales the projection's output per channel before the shortcut (V4 hybrids).
    """

    def __init__(self, in_ch: int, out_ch: int, expand_ch: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, se_ch: int = 0, act: str = "relu6",
                 proj_act: str | None = None, shortcut: str = "bottleneck",
                 padding: str = "symmetric", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 start_kernel: int = 0, expand_kernel: int = 1, layer_scale: float = 0.0,
                 expand_conv: bool | None = None):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is not one of {SHORTCUTS}")
        fused = expand_kernel > 1
        if fused and (kernel_size or start_kernel):
            raise ValueError("a fused expansion (expand_kernel > 1) takes no depthwise conv")
        if stride > 1 and not (kernel_size or start_kernel or fused):
            raise ValueError(f"stride={stride} needs a depthwise or fused conv to carry it")
        norm = dict(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.in_channels, self.out_channels, self.stride = in_ch, out_ch, stride
        self.expand_kernel = expand_kernel
        self.start = (ConvBNAct(in_ch, in_ch, start_kernel, 1 if kernel_size else stride,
                                groups=in_ch, dilation=dilation, act=None, **norm)
                      if start_kernel else nn.Identity())
        self.expand = (ConvBNAct(in_ch, expand_ch, expand_kernel, stride if fused else 1,
                                 dilation=dilation if fused else 1, act=act, **norm)
                       if ((expand_ch != in_ch or fused) if expand_conv is None else expand_conv)
                       else nn.Identity())
        self.depthwise = (ConvBNAct(expand_ch, expand_ch, kernel_size, stride, groups=expand_ch,
                                    dilation=dilation, act=act, **norm)
                          if kernel_size else nn.Identity())
        self.se = SqueezeExcite(expand_ch, se_ch) if se_ch else nn.Identity()
        self.project = ConvBNAct(expand_ch, out_ch, 1, act=proj_act, **norm)
        self.layer_scale = LayerScale(out_ch, layer_scale) if layer_scale else nn.Identity()
        self.residual = stride == 1 and shortcut == "bottleneck" and in_ch == out_ch
        self.expansion_residual = stride == 1 and shortcut == "expansion"
        self._add_in_place = proj_act is None or bool(layer_scale)
        self.drop_path: nn.Module = nn.Identity()   # stochastic depth, set by the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.expand(self.start(x))
        out = self.se(self.depthwise(wide))
        if self.expansion_residual:
            out = out + wide
        out = self.layer_scale(self.project(out))
        if self.residual:
            out = self.drop_path(out)
            # A linear projection's (or layer scale's) output is saved by nothing, so adding in
            # place is safe for autograd and spares one allocation; after an activation it is
            # saved for backward.
            out = out.add_(x) if self._add_in_place else out + x
        return out


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch's output (CaiT), started small so that a
    deep stack begins close to the identity; V4's hybrids use it on every UIB and attention
    block. The parameter is named `gamma`, as in timm and the TF reference."""

    def __init__(self, channels: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class AttentionProducts(nn.Module):
    """softmax(q·kᵀ/√d)·v for q (N, heads, Lq, d), k (N, 1, Lk, d), v (N, 1, Lk, dv): a module
    of its own so that the profiler sees the attention's two matrix products."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class MultiQueryAttention(nn.Module):
    """MobileNetV4's Mobile MQA block: BN → multi-query attention → [layer scale], with a shortcut.

    All heads share one key and one value projection (multi-query attention), which cuts the
    memory traffic that dominates attention on mobile accelerators. With `kv_stride` 2 the keys
    and values come from a k×k stride-2 depthwise conv + BN first (spatial reduction), so each
    of the Lq = H·W queries attends to H·W/4 positions. Queries keep full resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, heads: int, key_dim: int, value_dim: int,
                 kv_stride: int = 1, kv_kernel: int = 3, dilation: int = 1,
                 layer_scale: float = 0.0, shortcut: str = "bottleneck",
                 padding: str = "symmetric", bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is not one of {SHORTCUTS}")
        norm = dict(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.in_channels, self.out_channels, self.stride = in_ch, out_ch, 1
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.norm = nn.BatchNorm2d(in_ch, eps=bn_eps, momentum=bn_momentum)
        self.query = nn.Conv2d(in_ch, heads * key_dim, 1, bias=False)

        def downsample() -> nn.Module:
            return (ConvBNAct(in_ch, in_ch, kv_kernel, kv_stride, groups=in_ch, dilation=dilation,
                              act=None, **norm) if kv_stride > 1 else nn.Identity())
        self.key_down, self.key = downsample(), nn.Conv2d(in_ch, key_dim, 1, bias=False)
        self.value_down, self.value = downsample(), nn.Conv2d(in_ch, value_dim, 1, bias=False)
        self.attend = AttentionProducts()
        self.output = nn.Conv2d(heads * value_dim, out_ch, 1, bias=False)
        self.layer_scale = LayerScale(out_ch, layer_scale) if layer_scale else nn.Identity()
        self.residual = shortcut != "none" and in_ch == out_ch
        self.drop_path: nn.Module = nn.Identity()   # stochastic depth, set by the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        y = self.norm(x)
        # Channels are head-major (head · key_dim + d), the layout of the reference weights.
        q = self.query(y).reshape(n, self.heads, self.key_dim, h * w).transpose(-1, -2)
        k = self.key(self.key_down(y)).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.value(self.value_down(y)).flatten(2).transpose(1, 2).unsqueeze(1)
        out = self.attend(q, k, v).transpose(-1, -2).reshape(n, self.heads * self.value_dim, h, w)
        out = self.layer_scale(self.output(out))
        return self.drop_path(out) + x if self.residual else out
