"""The papers' architecture tables, as tables, and their resolution into per-block specs.

Each table below can be held next to the paper: V1 Table 1, V2 Table 2, V3 Tables 1 and 2,
V4's appendix tables of Conv-S, Conv-M, Conv-L, Hybrid-M and Hybrid-L.
`build_arch` applies the options (width multiplier, ablation switches, small inputs, output
stride) the way the reference implementations do and returns an `Arch`, from which
`mobilenets.models.MobileNet` builds every variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..core.errors import MobileNetsError
from .layers import SHORTCUTS, make_divisible

# MobileNetV1, Table 1: after a 3×3/s2 conv to 32 channels, depthwise separable blocks
# (depthwise stride, pointwise output channels). The paper prints s2 for the last depthwise
# conv but the 7×7 map stays 7×7; the reference code uses stride 1 there.
V1_STEM = 32
V1_BLOCKS = [
    (1, 64),
    (2, 128), (1, 128),
    (2, 256), (1, 256),
    (2, 512), (1, 512), (1, 512), (1, 512), (1, 512), (1, 512),
    (2, 1024), (1, 1024),
]

# MobileNetV2, Table 2: bottleneck rows (t, c, n, s); only the first of n repeats has stride s.
V2_STEM = 32
V2_BLOCKS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
V2_HEAD = 1280

# MobileNetV3, Tables 1 and 2: bneck rows (kernel, exp size, out, SE, NL, s).
# RE = ReLU, HS = h-swish.
V3_LARGE_STEM = 16
V3_LARGE_BLOCKS = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
V3_LARGE_HEAD = 1280  # the NBN 1×1 conv after pooling

V3_SMALL_STEM = 16
V3_SMALL_BLOCKS = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
V3_SMALL_HEAD = 1024
# The efficient last stage: a 1×1 conv to 6× the last block's width (960 / 576) before pooling.
V3_LAST_CONV_RATIO = 6

V3_ACT = {"RE": "relu", "HS": "hswish"}
V1_V2_ACTS = ("relu", "relu6")

# MobileNetV4 (Qin et al. 2024), the appendix tables: one row per layer between the stem and the
# 1×1 conv to 960 channels, in the tables' columns.
#   ("conv", kernel, out, stride)                        Conv2D: conv-BN-act
#   ("fused", kernel, expanded, out, stride)             FusedIB: k×k expansion, 1×1 projection
#   ("uib", start_dw, middle_dw, expanded, out, stride)  UIB; a kernel of 0 is "no depthwise conv":
#                                                        IB (0, k), ConvNext (k, 0), ExtraDW (k, k),
#                                                        FFN (0, 0)
#   ("mqa", heads, key_dim, kv_stride, out, stride)      Mobile MQA, value_dim = key_dim; with
#                                                        kv_stride 2, keys and values come from a
#                                                        3×3/s2 depthwise conv
# "expanded" is the tables' Expanded Dim; under a width multiplier it is a ratio of the block's
# rounded input width, as in the reference code (TF Model Garden, timm). Conv-S's first four rows
# are the table's two FusedIB layers (expanded 32 → 32 and 96 → 64) as the reference code builds
# them: two conv-BN-ReLU layers each, so the 1×1 projection has a ReLU, and under a multiplier the
# expanded width scales as an output width.
V4_CONV_SMALL = [
    ("conv", 3, 32, 2), ("conv", 1, 32, 1),
    ("conv", 3, 96, 2), ("conv", 1, 64, 1),
    ("uib", 5, 5, 192, 96, 2),
    ("uib", 0, 3, 192, 96, 1),
    ("uib", 0, 3, 192, 96, 1),
    ("uib", 0, 3, 192, 96, 1),
    ("uib", 0, 3, 192, 96, 1),
    ("uib", 3, 0, 384, 96, 1),
    ("uib", 3, 3, 576, 128, 2),
    ("uib", 5, 5, 512, 128, 1),
    ("uib", 0, 5, 512, 128, 1),
    ("uib", 0, 5, 384, 128, 1),
    ("uib", 0, 3, 512, 128, 1),
    ("uib", 0, 3, 512, 128, 1),
]
V4_CONV_MEDIUM = [
    ("fused", 3, 128, 48, 2),
    ("uib", 3, 5, 192, 80, 2),
    ("uib", 3, 3, 160, 80, 1),
    ("uib", 3, 5, 480, 160, 2),
    ("uib", 3, 3, 640, 160, 1),
    ("uib", 3, 3, 640, 160, 1),
    ("uib", 3, 5, 640, 160, 1),
    ("uib", 3, 3, 640, 160, 1),
    ("uib", 3, 0, 640, 160, 1),
    ("uib", 0, 0, 320, 160, 1),
    ("uib", 3, 0, 640, 160, 1),
    ("uib", 5, 5, 960, 256, 2),
    ("uib", 5, 5, 1024, 256, 1),
    ("uib", 3, 5, 1024, 256, 1),
    ("uib", 3, 5, 1024, 256, 1),
    ("uib", 0, 0, 1024, 256, 1),
    ("uib", 3, 0, 1024, 256, 1),
    ("uib", 3, 5, 512, 256, 1),
    ("uib", 5, 5, 1024, 256, 1),
    ("uib", 0, 0, 1024, 256, 1),
    ("uib", 0, 0, 1024, 256, 1),
    ("uib", 5, 0, 512, 256, 1),
]
V4_CONV_LARGE = [
    ("fused", 3, 96, 48, 2),
    ("uib", 3, 5, 192, 96, 2),
    ("uib", 3, 3, 384, 96, 1),
    ("uib", 3, 5, 384, 192, 2),
    ("uib", 3, 3, 768, 192, 1),
    ("uib", 3, 3, 768, 192, 1),
    ("uib", 3, 3, 768, 192, 1),
    ("uib", 3, 5, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("uib", 3, 0, 768, 192, 1),
    ("uib", 5, 5, 768, 512, 2),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 3, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 3, 2048, 512, 1),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
]
V4_HYBRID_MEDIUM = [
    ("fused", 3, 128, 48, 2),
    ("uib", 3, 5, 192, 80, 2),
    ("uib", 3, 3, 160, 80, 1),
    ("uib", 3, 5, 480, 160, 2),
    ("uib", 0, 0, 320, 160, 1),
    ("uib", 3, 3, 640, 160, 1),
    ("uib", 3, 5, 640, 160, 1),
    ("mqa", 4, 64, 2, 160, 1),
    ("uib", 3, 3, 640, 160, 1),
    ("mqa", 4, 64, 2, 160, 1),
    ("uib", 3, 0, 640, 160, 1),
    ("mqa", 4, 64, 2, 160, 1),
    ("uib", 3, 3, 640, 160, 1),
    ("mqa", 4, 64, 2, 160, 1),
    ("uib", 3, 0, 640, 160, 1),
    ("uib", 5, 5, 960, 256, 2),
    ("uib", 5, 5, 1024, 256, 1),
    ("uib", 3, 5, 1024, 256, 1),
    ("uib", 3, 5, 1024, 256, 1),
    ("uib", 0, 0, 512, 256, 1),
    ("uib", 3, 5, 512, 256, 1),
    ("uib", 0, 0, 512, 256, 1),
    ("uib", 0, 0, 1024, 256, 1),
    ("mqa", 4, 64, 1, 256, 1),
    ("uib", 3, 0, 1024, 256, 1),
    ("mqa", 4, 64, 1, 256, 1),
    ("uib", 5, 5, 1024, 256, 1),
    ("mqa", 4, 64, 1, 256, 1),
    ("uib", 5, 0, 1024, 256, 1),
    ("mqa", 4, 64, 1, 256, 1),
    ("uib", 5, 0, 1024, 256, 1),
]
V4_HYBRID_LARGE = [
    ("fused", 3, 96, 48, 2),
    ("uib", 3, 5, 192, 96, 2),
    ("uib", 3, 3, 384, 96, 1),
    ("uib", 3, 5, 384, 192, 2),
    ("uib", 3, 3, 768, 192, 1),
    ("uib", 3, 3, 768, 192, 1),
    ("uib", 3, 3, 768, 192, 1),
    ("uib", 3, 5, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("mqa", 8, 48, 2, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("mqa", 8, 48, 2, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("mqa", 8, 48, 2, 192, 1),
    ("uib", 5, 3, 768, 192, 1),
    ("mqa", 8, 48, 2, 192, 1),
    ("uib", 3, 0, 768, 192, 1),
    ("uib", 5, 5, 768, 512, 2),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 5, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 3, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("uib", 5, 3, 2048, 512, 1),
    ("uib", 5, 5, 2048, 512, 1),
    ("mqa", 8, 64, 1, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("mqa", 8, 64, 1, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("mqa", 8, 64, 1, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
    ("mqa", 8, 64, 1, 512, 1),
    ("uib", 5, 0, 2048, 512, 1),
]


@dataclass(frozen=True)
class V4Table:
    stem: int            # the first row: Conv2D 3×3/s2
    rows: list
    act: str             # one nonlinearity throughout (attention blocks have none of their own)
    layer_scale: float   # initial layer-scale value on UIB and attention blocks (0: none)


# Every V4 model ends with a 1×1 conv to 960 channels, pooling, and a 1×1 conv to 1280 with BN
# (and the activation) on the pooled 1×1 map.
V4_LAST_CONV = 960
V4_HEAD = 1280
V4_TABLES = {
    "mobilenet_v4_conv_small": V4Table(32, V4_CONV_SMALL, "relu", 0.0),
    "mobilenet_v4_conv_medium": V4Table(32, V4_CONV_MEDIUM, "relu", 0.0),
    "mobilenet_v4_conv_large": V4Table(24, V4_CONV_LARGE, "relu", 0.0),
    "mobilenet_v4_hybrid_medium": V4Table(32, V4_HYBRID_MEDIUM, "relu", 1e-5),
    "mobilenet_v4_hybrid_large": V4Table(24, V4_HYBRID_LARGE, "gelu", 1e-5),
}
V4_KV_KERNEL = 3


@dataclass(frozen=True)
class BlockSpec:
    in_ch: int
    out_ch: int
    expand_ch: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    se_ch: int = 0
    act: str = "relu6"
    proj_act: str | None = None
    shortcut: str = "bottleneck"
    start_kernel: int = 0       # V4 UIB: depthwise conv before the expansion (0: none)
    expand_kernel: int = 1      # V4 fused IB: k×k expansion conv, no depthwise (kernel 0)
    layer_scale: float = 0.0    # V4 hybrids: initial per-channel scale of the block's output


@dataclass(frozen=True)
class ConvSpec:
    """A plain conv-BN-act layer among the blocks (V4 Conv-S's first rows)."""
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    dilation: int = 1
    act: str = "relu"


@dataclass(frozen=True)
class AttentionSpec:
    """V4's Mobile MQA block."""
    in_ch: int
    out_ch: int
    heads: int
    key_dim: int
    value_dim: int
    kv_stride: int = 1
    kv_kernel: int = 3
    stride: int = 1
    dilation: int = 1
    layer_scale: float = 0.0
    shortcut: str = "bottleneck"


@dataclass(frozen=True)
class Arch:
    """A fully resolved network: what `MobileNet` builds, and what the profiler reports."""
    family: str
    stem_ch: int
    stem_stride: int
    stem_act: str
    blocks: tuple[BlockSpec | ConvSpec | AttentionSpec, ...]
    last_conv_ch: int | None       # 1×1 conv before pooling (V2 1280, V3 960/576; none in V1)
    last_conv_act: str | None
    head_ch: int | None            # V3's 1×1 NBN layer after pooling (1280/1024)
    head_act: str | None
    dropout: float
    # Blocks whose expansion can be computed in channel splits (V2 §5.1): their inner tensors
    # and the stem output feeding them never need to exist whole.
    split_expansions: bool
    feature_levels: tuple[int, ...] = field(default=())  # index into [stem, *blocks]
    head_norm: bool = False        # V4: batch norm between the head layer and its activation

    @property
    def total_stride(self) -> int:
        s = self.stem_stride
        for b in self.blocks:
            s *= b.stride
        return s

    @property
    def num_features(self) -> int:
        return self.head_ch or self.last_conv_ch or self.blocks[-1].out_ch


FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
            *V4_TABLES)
DEFAULT_DROPOUT = {"mobilenet_v1": 1e-3, "mobilenet_v2": 0.2,
                   "mobilenet_v3_large": 0.2, "mobilenet_v3_small": 0.2,
                   **{family: 0.2 for family in V4_TABLES}}


def check_width_mult(width_mult) -> float:
    try:
        w = float(width_mult)
    except (TypeError, ValueError):
        raise MobileNetsError(f"width_mult={width_mult!r} is not a number; use a value > 0, e.g. 0.75") from None
    if not math.isfinite(w) or w <= 0 or w > 8:
        raise MobileNetsError(f"width_mult={width_mult!r} is out of range; allowed: 0 < width_mult <= 8")
    return w


def _v1_blocks(w: float, act: str, proj_act: str | None, shortcut: str, stem: int):
    ch = lambda c: max(int(c * w), 8)  # noqa: E731  (slim's `depth` function)
    blocks, in_ch = [], stem
    for s, c in V1_BLOCKS:
        out = ch(c)
        blocks.append(BlockSpec(in_ch, out, in_ch, 3, s, act=act, proj_act=proj_act,
                                shortcut=shortcut))
        in_ch = out
    return blocks


def _v2_blocks(w: float, act: str, proj_act: str | None, shortcut: str, stem: int,
               expand_ratio: float | None):
    blocks, in_ch = [], stem
    for t, c, n, s in V2_BLOCKS:
        if expand_ratio is not None and t != 1:
            t = expand_ratio
        out = make_divisible(c * w)
        for i in range(n):
            blocks.append(BlockSpec(in_ch, out, int(round(in_ch * t)), 3, s if i == 0 else 1,
                                    act=act, proj_act=proj_act, shortcut=shortcut))
            in_ch = out
    return blocks


def _v3_blocks(table, w: float, minimalistic: bool, proj_act: str | None, shortcut: str,
               stem: int, stem_table: int, expand_ratio: float | None):
    # The reference code states each expansion as a ratio of the block's actual input width
    # (`expand_input(3)` for 72 = 3·24), so under α it follows the rounded input, not exp·α.
    blocks, in_ch, table_in = [], stem, stem_table
    for k, exp, c, se, nl, s in table:
        ratio = exp / table_in if expand_ratio is None or exp == table_in else expand_ratio
        out = make_divisible(c * w)
        exp_ch = in_ch if ratio == 1 else make_divisible(in_ch * ratio)
        use_se = se and not minimalistic
        blocks.append(BlockSpec(
            in_ch, out, exp_ch, 3 if minimalistic else k, s,
            se_ch=make_divisible(exp_ch / 4) if use_se else 0,
            act="relu" if minimalistic else V3_ACT[nl], proj_act=proj_act, shortcut=shortcut))
        in_ch, table_in = out, c
    return blocks


def _v4_blocks(table: V4Table, w: float, proj_act: str | None, shortcut: str, stem: int):
    # Outputs are rounded as in V2/V3; expansions are ratios of the table's input width applied
    # to the rounded one (the reference code states them as ratios); heads and key widths of
    # attention stay as printed.
    blocks, in_ch, table_in = [], stem, table.stem
    for kind, *row in table.rows:
        if kind == "conv":
            k, c, s = row
            out = make_divisible(c * w)
            blocks.append(ConvSpec(in_ch, out, k, s, act=table.act))
        elif kind == "mqa":
            heads, key_dim, kv_stride, c, s = row
            out = make_divisible(c * w)
            blocks.append(AttentionSpec(in_ch, out, heads, key_dim, key_dim, kv_stride,
                                        V4_KV_KERNEL, s, layer_scale=table.layer_scale,
                                        shortcut=shortcut))
        else:
            # timm and the TF reference give the fused IB no layer scale, the UIB one.
            start, mid, exp, c, s = (0, 0, *row[1:]) if kind == "fused" else row
            out = make_divisible(c * w)
            blocks.append(BlockSpec(
                in_ch, out, make_divisible(in_ch * (exp / table_in)), mid, s, act=table.act,
                proj_act=proj_act, shortcut=shortcut, start_kernel=start,
                expand_kernel=row[0] if kind == "fused" else 1,
                layer_scale=0.0 if kind == "fused" else table.layer_scale))
        in_ch, table_in = out, c
    return blocks


def _feature_levels(stem_stride: int, blocks) -> tuple[int, ...]:
    """Indices into [stem, *blocks] of the last layer at each reduction level."""
    strides = [stem_stride] + [b.stride for b in blocks]
    levels = [i for i in range(len(strides) - 1) if strides[i + 1] > 1]
    levels.append(len(strides) - 1)
    return tuple(levels)


def build_arch(family: str, width_mult: float = 1.0, *, dropout: float | None = None,
               small_input: bool = False, output_stride: int = 32, minimalistic: bool = False,
               proj_act: str | None = "default", shortcut: str = "bottleneck",
               expand_ratio: float | None = None, act: str | None = None,
               fixed_stem: bool = False) -> Arch:
    """Resolve a family's table and options into an `Arch`.

    proj_act: activation after the 1×1 projection; "default" is the paper's choice
    (linear for V2/V3, ReLU for V1), or None / "relu6" / "relu" for the V2 Fig. 6a ablation.
    expand_ratio: replaces the expansion t of every block that expands (V2 ablation).
    act: the one nonlinearity of V1/V2 (None = the paper's: ReLU for V1, ReLU6 for V2). The
    TensorFlow V1 reference (slim, Keras) and timm use ReLU6, so their weights need act="relu6".
    fixed_stem: keep the stem at the table's width whatever the multiplier, as Keras' V3 always
    does and timm's V3 below α 0.75 (mobilenetv3_small_050). V4 keeps it below α 1 regardless.
    """
    if family not in FAMILIES:
        raise MobileNetsError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    w = check_width_mult(width_mult)
    if shortcut not in SHORTCUTS:
        raise MobileNetsError(f"shortcut={shortcut!r} is not one of {', '.join(SHORTCUTS)}")
    if output_stride not in (8, 16, 32):
        raise MobileNetsError(f"output_stride={output_stride!r} is not one of 8, 16, 32")
    if expand_ratio is not None and not (isinstance(expand_ratio, (int, float)) and expand_ratio >= 1):
        raise MobileNetsError(f"expand_ratio={expand_ratio!r} is out of range; allowed: >= 1")
    if minimalistic and not family.startswith("mobilenet_v3"):
        raise MobileNetsError(f"minimalistic=True applies to MobileNetV3 only, not {family}")
    if proj_act not in ("default", None, "relu", "relu6", "hswish"):
        raise MobileNetsError(f"proj_act={proj_act!r} is not one of None, 'relu', 'relu6', 'hswish'")
    if act is not None and family.startswith("mobilenet_v3"):
        raise MobileNetsError(f"act={act!r} applies to MobileNetV1/V2; V3 mixes ReLU and h-swish "
                              "(minimalistic=True makes it ReLU only)")
    if act is not None and family.startswith("mobilenet_v4"):
        raise MobileNetsError(f"act={act!r} applies to MobileNetV1/V2; V4 keeps its tables' "
                              "activation (ReLU, GELU in Hybrid-L)")
    if expand_ratio is not None and family.startswith("mobilenet_v4"):
        raise MobileNetsError("expand_ratio applies to MobileNetV2/V3 blocks; V4's tables set "
                              "each block's expansion")
    if act is not None and act not in V1_V2_ACTS:
        raise MobileNetsError(f"act={act!r} is not one of {', '.join(map(repr, V1_V2_ACTS))}")
    if dropout is not None and not 0 <= dropout < 1:
        raise MobileNetsError(f"dropout={dropout!r} is out of range; allowed: 0 <= dropout < 1")

    if family == "mobilenet_v1":
        if expand_ratio is not None:
            raise MobileNetsError("expand_ratio applies to MobileNetV2/V3 blocks; V1 has no expansion")
        act = act or "relu"
        stem = V1_STEM if fixed_stem else max(int(V1_STEM * w), 8)
        blocks = _v1_blocks(w, act, act if proj_act == "default" else proj_act,
                            "none" if shortcut == "bottleneck" else shortcut, stem)
        arch = dict(stem_ch=stem, stem_act=act, last_conv_ch=None, last_conv_act=None,
                    head_ch=None, head_act=None, split_expansions=False)
    elif family == "mobilenet_v2":
        act = act or "relu6"
        stem = V2_STEM if fixed_stem else make_divisible(V2_STEM * w)
        blocks = _v2_blocks(w, act, None if proj_act == "default" else proj_act, shortcut,
                            stem, expand_ratio)
        arch = dict(stem_ch=stem, stem_act=act, last_conv_act=act,
                    last_conv_ch=make_divisible(V2_HEAD * max(1.0, w)),
                    head_ch=None, head_act=None, split_expansions=True)
    elif family.startswith("mobilenet_v4"):
        table = V4_TABLES[family]
        # The reference code keeps the stem at the table's width for α < 1 (timm's fix_stem)
        # and the 1280-wide head layer at every width.
        stem = table.stem if fixed_stem or w < 1 else make_divisible(table.stem * w)
        blocks = _v4_blocks(table, w, None if proj_act == "default" else proj_act, shortcut, stem)
        # V2 §5.1's split execution has no form for V4's full-width conv and fused rows, so
        # Table 3 memory counts every layer's output.
        arch = dict(stem_ch=stem, stem_act=table.act, last_conv_act=table.act,
                    last_conv_ch=make_divisible(V4_LAST_CONV * w), head_ch=V4_HEAD,
                    head_act=table.act, head_norm=True, split_expansions=False)
    else:
        large = family == "mobilenet_v3_large"
        table, head = (V3_LARGE_BLOCKS, V3_LARGE_HEAD) if large else (V3_SMALL_BLOCKS, V3_SMALL_HEAD)
        stem_table = V3_LARGE_STEM if large else V3_SMALL_STEM
        stem = stem_table if fixed_stem else make_divisible(stem_table * w)
        blocks = _v3_blocks(table, w, minimalistic, None if proj_act == "default" else proj_act,
                            shortcut, stem, stem_table, expand_ratio)
        act = "relu" if minimalistic else "hswish"
        arch = dict(stem_ch=stem, stem_act=act, last_conv_act=act,
                    last_conv_ch=V3_LAST_CONV_RATIO * blocks[-1].out_ch,
                    head_ch=make_divisible(head * max(1.0, w)), head_act=act,
                    split_expansions=True)

    levels = _feature_levels(2, blocks)
    stem_stride = 2
    if small_input:
        # Keep 28–32 px inputs from collapsing: no stride at the stem nor the first
        # downsampling block (total stride 8 instead of 32).
        stem_stride = 1
        first = next(i for i, b in enumerate(blocks) if b.stride > 1)
        blocks[first] = replace(blocks[first], stride=1)
    blocks = _dilate(blocks, stem_stride, output_stride)
    return Arch(family=family, stem_ch=arch.pop("stem_ch"), stem_stride=stem_stride,
                blocks=tuple(blocks), dropout=DEFAULT_DROPOUT[family] if dropout is None else dropout,
                feature_levels=levels, **arch)


def _dilate(blocks: list[BlockSpec], stride: int, output_stride: int) -> list[BlockSpec]:
    """Replace strides beyond `output_stride` by dilation (atrous convolution, DeepLab)."""
    out, dilation = [], 1
    for b in blocks:
        if b.stride > 1 and stride * b.stride > output_stride:
            dilation *= b.stride
            b = replace(b, stride=1, dilation=dilation)
        elif dilation > 1:
            b = replace(b, dilation=dilation)
        stride *= b.stride
        out.append(b)
    return out
