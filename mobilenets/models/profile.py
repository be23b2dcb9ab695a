"""Analytic cost of a model: parameters, multiply-adds and activation memory, per layer.

The model runs once on meta tensors (shapes only, no arithmetic), so profiling a 1.4× model at
224 px takes milliseconds. Counting follows the papers: multiply-adds of convolutions and fully
connected layers only (so squeeze-excite's two 1×1 layers and the classifier count; h-swish and
other activations, the squeeze-excite product, residual additions, pooling and batch norm do
not); parameters with and without batch norm; activation memory as V2 §5.1 /
Table 3 defines it and as plain eager execution needs it.

Attention (MobileNetV4's Mobile MQA blocks) adds its two matrix products, one row of kind
"attention" per block: Q·Kᵀ costs heads · Lq · Lk · key_dim multiply-adds and attention·V
heads · Lq · Lk · value_dim, for Lq queries and Lk keys. Its projections are 1×1 convs and count
as such; softmax, the 1/√d scaling, layer scale, batch norm and activations count nothing, as
elsewhere. This is torch's FLOP counter on timm's implementation, halved (it charges 2 FLOPs per
multiply-add of convolutions, linear layers and matmuls and nothing else), and what reproduces
V4's published MACs (docs/paper_tables.md).
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from .layers import AttentionProducts, InvertedResidual, MultiQueryAttention, SqueezeExcite
from .mobilenet import check_resolution, create_model, model_defaults
from .specs import splittable

FP16, FP32 = 2, 4
# Modules that return their input or a view of it allocate nothing.
_FREE = (nn.Identity, nn.Flatten, nn.Dropout)
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all trainable parameters, parameters outside batch-norm layers)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for p in m.parameters(recurse=False) if p.requires_grad)
    return total, total - bn


def layer_kind(m: nn.Module) -> str:
    if isinstance(m, AttentionProducts):
        return "attention"
    if isinstance(m, nn.Linear):
        return "fc"
    if m.groups == 1:
        return "pointwise" if m.kernel_size == (1, 1) else "conv"
    if m.groups == m.in_channels == m.out_channels:
        return "depthwise"
    return "grouped"


def _attention_madds(q: torch.Tensor, k: torch.Tensor, out: torch.Tensor) -> int:
    """Q·Kᵀ and attention·V: every query meets every key, over key_dim and value_dim."""
    keys = k.shape[-2]
    return (q.numel() + out.numel()) // q.shape[0] * keys


def _madds(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Linear):
        return out.numel() // out.shape[0] * m.in_features
    kh, kw = m.kernel_size
    return out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw


def _input_channels(model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "in_chans" in cfg:
        return cfg["in_chans"]
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


class _Tracer:
    """Hooks that record each counted layer and the live activation bytes at each op."""

    def __init__(self, model: nn.Module):
        self.names = {m: n for n, m in model.named_modules()}
        self.layers: list[dict] = []
        self.held: list[torch.Tensor] = []   # tensors a block keeps alive for its shortcut
        self.peak_elems = 0
        self.inside_se = 0
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self.pre))
            self.handles.append(m.register_forward_hook(self.post))

    def close(self):
        for h in self.handles:
            h.remove()

    def live(self, tensors) -> None:
        seen, elems = set(), 0
        for t in [*self.held, *tensors]:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                elems += t.numel()
        self.peak_elems = max(self.peak_elems, elems)

    def pre(self, m, inputs):
        if isinstance(m, (InvertedResidual, MultiQueryAttention)):
            self.held.append(inputs[0] if m.residual else None)
        if isinstance(m, SqueezeExcite):
            self.inside_se += 1

    def post(self, m, inputs, out):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            self.layers.append(dict(
                name=self.names[m], kind=layer_kind(m), type=type(m).__name__,
                input_shape=list(inputs[0].shape[1:]), output_shape=list(out.shape[1:]),
                kernel=list(getattr(m, "kernel_size", (1, 1))), stride=list(getattr(m, "stride", (1, 1))),
                groups=getattr(m, "groups", 1),
                params=sum(p.numel() for p in m.parameters()), madds=_madds(m, out)))
        elif isinstance(m, AttentionProducts):
            q, k, _ = inputs
            self.layers.append(dict(
                name=self.names[m], kind=layer_kind(m), type=type(m).__name__,
                input_shape=list(q.shape[1:]), output_shape=list(out.shape[1:]), kernel=[1, 1],
                stride=[1, 1], groups=1, params=0, madds=_attention_madds(q, k, out)))
        if isinstance(m, SqueezeExcite):
            self.inside_se -= 1
            self.live([inputs[0], out])   # x held while the gate is computed, then x·s
        elif isinstance(m, (InvertedResidual, MultiQueryAttention)):
            x = self.held.pop()
            if x is not None:
                self.live([x, out])        # the in-place residual add
        elif not self.inside_se and not list(m.children()) and not isinstance(m, _FREE):
            self.live([*inputs, out])


def _table3(arch, layers: list[dict]) -> list[dict]:
    """Largest tensor that must be materialized at each spatial size (V2 §5.1, Table 3).

    Networks of inverted residuals (V2, V3) compute each splittable block's expansion in channel
    splits (`specs.splittable`), so only the bottleneck tensors between those blocks exist
    whole; the stem output and the last 1×1 conv before pooling are consumed split by split
    too, as the paper counts them. A block that cannot be split (squeeze-excite's gate pools
    the whole expansion) runs as it is, as `deploy.memory_efficient` runs it: its input and
    every tensor inside it exist whole. V1 has no such structure: every layer's output exists
    whole.
    """
    if arch is None or not arch.split_expansions:
        # An attention row's output is (heads, queries, value_dim): the elements of the map
        # its output projection reads, not a map of its own.
        shapes = [layer["output_shape"] for layer in layers if layer["kind"] != "attention"]
    else:
        whole = {i for i, spec in enumerate(arch.blocks) if not splittable(spec)}
        shapes = []
        # A task model's backbone is its `backbone` child.
        for layer in layers:
            name = layer["name"].removeprefix("backbone.")
            block = _BLOCK.match(name)
            if block and int(block.group(1)) in whole:
                shapes += [layer["input_shape"], layer["output_shape"]]
            elif name.endswith("project.conv") or not name.startswith(("stem.", "blocks.", "last_conv.")):
                shapes.append(layer["output_shape"])
    if arch is not None and layers:
        shapes.append([arch.last_conv_ch or arch.blocks[-1].out_ch, 1, 1])   # the pooled vector
    per_size: dict[tuple, int] = defaultdict(int)
    for shape in shapes:
        c, h, w = (shape + [1, 1])[:3]
        per_size[(h, w)] = max(per_size[(h, w)], c)
    rows = [dict(size=f"{h}x{w}", channels=c, bytes_fp16=c * h * w * FP16)
            for (h, w), c in sorted(per_size.items(), key=lambda kv: -kv[0][0] * kv[0][1])]
    return rows


def profile(model, resolution: int | tuple[int, int] = 224) -> dict:
    """Parameters, multiply-adds and activation memory of `model` (a module or a model name).

    Returns {"model", "width_mult", "resolution", "params", "params_without_bn", "madds",
    "memory_table3_bytes_fp16", "peak_memory_bytes_fp16", "peak_memory_bytes_fp32",
    "memory_table3", "layers"}; memory is for one image.
    """

    if isinstance(model, str):
        model = create_model(model)
    # (height, width) for a non-square input, as V3 Table 7's 1024×2048 Cityscapes crops
    height, width = resolution if isinstance(resolution, tuple) else (resolution, resolution)
    check_resolution(model, height)
    check_resolution(model, width)
    params, params_without_bn = count_params(model)
    x = torch.empty(1, _input_channels(model), height, width, device="meta")
    state = {k: v.to("meta") for k, v in [*model.named_parameters(), *model.named_buffers()]}
    tracer = _Tracer(model)
    # Eval mode, because training-mode batch norm refuses one image on a 1×1 map (SSD's last
    # extra layers, ASPP's pooling branch).
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (x,))
    finally:
        tracer.close()
        model.train(was_training)
    arch = getattr(model, "arch", None)
    table3 = _table3(arch, tracer.layers)
    return {
        "model": getattr(model, "model_name", type(model).__name__),
        "width_mult": (getattr(model, "model_kwargs", {}) or {}).get(
            "width_mult", _registered_width(model)),
        "resolution": resolution,
        "params": params,
        "params_without_bn": params_without_bn,
        "madds": sum(layer["madds"] for layer in tracer.layers),
        "memory_table3_bytes_fp16": max((r["bytes_fp16"] for r in table3), default=0),
        "peak_memory_bytes_fp16": tracer.peak_elems * FP16,
        "peak_memory_bytes_fp32": tracer.peak_elems * FP32,
        "memory_table3": table3,
        "layers": tracer.layers,
    }


def _registered_width(model) -> float:
    name = getattr(model, "model_name", None)
    try:
        return model_defaults(name).get("width_mult", 1.0) if name else 1.0
    except ValueError:
        return 1.0
