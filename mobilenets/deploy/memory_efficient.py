"""Memory-efficient inverted residual execution (MobileNetV2 §5.1).

A bottleneck block computes F(x) = A·N·B·x, where B is the 1×1 expansion, N the per-channel
non-linear part (activation, depthwise conv, activation) and A the linear 1×1 projection. N acts on
each expanded channel independently, so with the expanded channels cut into k groups

    F(x) = Σ_i A_i · N_i · B_i · x

and only one group's expanded tensor (t·C/k channels) exists at a time; the full t·C-channel tensor
never does. The sum is exact only if A is linear and its BN is folded into it first (the bias is
added once, after the sum), hence blocks are built from a `fold_batchnorm`-ed model and blocks with
an activation after the projection (V1) or squeeze-excite (whose pooled gate mixes all channels)
stay as they are.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .fuse import fold_batchnorm
from ..models.layers import InvertedResidual


def _sliced_conv(conv: nn.Conv2d, out_sl: slice, in_sl: slice | None = None, bias: bool = True) -> nn.Conv2d:
    """The conv's output (or input) channels `out_sl` (`in_sl`), as a conv of the same class, so
    TF "same" padding comes along."""
    w = conv.weight[out_sl] if in_sl is None else conv.weight[:, in_sl]
    depthwise = conv.groups > 1
    c = type(conv)(w.shape[1] * (w.shape[0] if depthwise else 1), w.shape[0], conv.kernel_size,
                   conv.stride, conv.padding, conv.dilation, groups=w.shape[0] if depthwise else 1,
                   bias=bias and conv.bias is not None)
    c.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
    if c.bias is not None:
        c.bias = nn.Parameter(conv.bias[out_sl].detach().clone(), requires_grad=False)
    return c


def can_split(block: nn.Module) -> bool:
    # V4's UIB variants (a depthwise conv before the expansion, none after it, layer scale) and
    # fused expansions have no split form here.
    return (isinstance(block, InvertedResidual) and isinstance(block.se, nn.Identity)
            and isinstance(block.start, nn.Identity) and isinstance(block.layer_scale, nn.Identity)
            and not isinstance(block.depthwise, nn.Identity) and block.expand_kernel == 1
            and isinstance(block.project.act, nn.Identity)
            and not any(isinstance(m, nn.BatchNorm2d) for m in block.modules()))


class SplitInvertedResidual(nn.Module):
    """An InvertedResidual (BN folded, linear projection, no SE) run in `splits` channel groups."""

    def __init__(self, block: InvertedResidual, splits: int):
        super().__init__()
        if not can_split(block):
            raise ValueError("needs a BN-folded InvertedResidual with a linear projection and no SE")
        wide = block.depthwise.conv.in_channels
        k = max(1, min(splits, wide))
        bounds = [(wide * i // k, wide * (i + 1) // k) for i in range(k)]
        self.splits = k
        self.has_expand = not isinstance(block.expand, nn.Identity)
        dw, dw_act = block.depthwise.conv, block.depthwise.act
        proj = block.project.conv
        self.branches = nn.ModuleList()
        self.projections = []
        self.bounds = bounds
        for a, b in bounds:
            sl = slice(a, b)
            layers: list[nn.Module] = []
            if self.has_expand:
                ex = block.expand
                layers += [_sliced_conv(ex.conv, sl), copy.deepcopy(ex.act)]
            depthwise = [_sliced_conv(dw, sl), copy.deepcopy(dw_act)]
            self.branches.append(nn.ModuleDict(dict(expand=nn.Sequential(*layers),
                                                    depthwise=nn.Sequential(*depthwise))))
            # (c_i, out) so that pixels × c_i @ it accumulates into the pixels × out output
            self.projections.append(nn.Parameter(
                proj.weight[:, sl, 0, 0].detach().t().contiguous(), requires_grad=False))
        self.projections = nn.ParameterList(self.projections)
        self.out_channels = proj.out_channels
        self.register_buffer("proj_bias", proj.bias.detach().clone())
        self.residual = block.residual
        self.expansion_residual = block.expansion_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for (a, b), branch, weight in zip(self.bounds, self.branches, self.projections):
            wide = branch["expand"](x) if self.has_expand else x[:, a:b]
            h = branch["depthwise"](wide)
            if self.expansion_residual:
                h = h + wide
            del wide
            n, _, height, width = h.shape
            # The 1×1 projection as a matrix product accumulated in place (addmm_), so no
            # projection-sized temporary exists per group; for channels_last h the
            # pixels × channels view is free.
            pixels = h.permute(0, 2, 3, 1).reshape(-1, b - a)
            if out is None:
                out = torch.empty(n, height, width, self.out_channels, dtype=h.dtype, device=h.device)
                rows = out.view(-1, self.out_channels)
                rows.copy_(self.proj_bias.expand_as(rows))
            rows.addmm_(pixels, weight)
            del h, pixels
        out = out.permute(0, 3, 1, 2)   # N×C×H×W with channels_last strides
        if self.residual:
            out = out.add_(x)
        return out


def memory_efficient(model: nn.Module, splits: int, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of `model` with BN folded and every splittable block split in `splits`.

    channels_last (feed it channels_last inputs too) keeps oneDNN from copying each group's
    tensors into its blocked layout and back, copies that would cost more memory than splitting
    saves."""
    m = copy.deepcopy(model).eval()
    fold_batchnorm(m)
    for p in m.parameters():
        p.requires_grad_(False)
    blocks = getattr(m, "blocks", None)
    if blocks is not None:
        for i, block in enumerate(blocks):
            if can_split(block):
                blocks[i] = SplitInvertedResidual(block, splits)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def measured_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of CPU memory allocated during `model(x)` above what existed before, plus the
    input: every allocation and free the profiler recorded (`profile_memory`), in time order.
    Includes kernels' scratch buffers, so it is the allocator's view, not a count of tensors."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode():
        model(x)  # lazy initialisation (weight packing, caches) outside the measurement
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    stack, sizes = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            sizes.append((e.start_time_ns, e.extra_fields.alloc_size))
        stack.extend(e.children)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak + x.numel() * x.element_size()
