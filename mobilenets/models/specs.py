"""The papers' tables (`tables.py`) resolved into per-block specs. Plain Python: no torch.

`build_arch` applies the options (width multiplier, ablation switches, small inputs, output
stride) the way the reference implementations do and returns an `Arch`, from which
`mobilenets.models.MobileNet` builds every variant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..core.errors import MobileNetsError
from .tables import (V1_BLOCKS, V1_SHALLOW_BLOCKS, V1_STEM, V1_V2_ACTS, V2_BLOCKS, V2_HEAD, V2_STEM, V3_ACT,
                    V3_LARGE_BLOCKS, V3_LARGE_HEAD, V3_LARGE_LAST_CONV, V3_LARGE_ORIGINAL_LAST_BLOCK,
                    V3_LARGE_ORIGINAL_LAST_CONV, V3_LARGE_STEM,
                    V3_SMALL_BLOCKS, V3_SMALL_HEAD, V3_SMALL_LAST_CONV, V3_SMALL_STEM, V4Table, V4_HEAD,
                    V4_KV_KERNEL, V4_LAST_CONV, V4_TABLES)

SHORTCUTS = ("bottleneck", "expansion", "none")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `v` (TF reference rule)."""
    min_value = divisor if min_value is None else min_value
    n = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if n < 0.9 * v:
        n += divisor
    return n



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
    expand_conv: bool | None = None  # None: an expansion conv wherever expand_ch != in_ch (a
                                     # channel plan fixes it, widths may then coincide)


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


def splittable(spec) -> bool:
    """Can V2 §5.1's channel-split execution run this block? Only an inverted residual whose
    expansion feeds a per-channel part (activation, depthwise conv, activation) and then a linear
    projection: squeeze-excite's pooled gate mixes all expanded channels, a projection activation
    (V1) does not distribute over the sum, and V4's start depthwise, fused expansion and layer
    scale have no split form. `deploy.memory_efficient.can_split` applies the same rule to the
    built (BN-folded) module."""
    return (isinstance(spec, BlockSpec) and spec.se_ch == 0 and spec.proj_act is None
            and spec.kernel > 0 and spec.start_kernel == 0 and spec.expand_kernel == 1
            and not spec.layer_scale)


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


def _v1_blocks(w: float, act: str, proj_act: str | None, shortcut: str, stem: int,
               full_conv: bool = False, shallow: bool = False):
    ch = lambda c: max(int(c * w), 8)  # noqa: E731  (slim's `depth` function)
    blocks, in_ch = [], stem
    for s, c in V1_SHALLOW_BLOCKS if shallow else V1_BLOCKS:
        out = ch(c)
        if full_conv:
            # V1 Table 4's "Conv MobileNet": one full 3×3 conv where the separable pair was.
            blocks.append(ConvSpec(in_ch, out, 3, s, act=act))
        else:
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


LAST_STAGES = ("efficient", "original")


def v3_layer_acts(rows: int, minimalistic: bool, hswish_from: int | None, table_acts) -> list[str]:
    """The nonlinearity of each V3 layer in table order: the stem, one per bneck row, then the
    last stage (every layer after the last row). hswish_from: None keeps the tables' NL column
    (the stem and the last stage use h-swish); an index k in 0..rows+2 makes the layers before k
    ReLU and those from k on h-swish, so 0 is h-swish everywhere and rows+2 ReLU everywhere
    (V3 Table 5's arms)."""
    if minimalistic:
        return ["relu"] * (rows + 2)
    if hswish_from is None:
        return ["hswish", *table_acts, "hswish"]
    return ["relu" if i < hswish_from else "hswish" for i in range(rows + 2)]


def check_v3_rows(rows) -> list[tuple]:
    """V3 bneck rows as tuples, or one line naming the row that is not (k, exp, c, SE, NL, s)."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise MobileNetsError(f"blocks={rows!r}: a non-empty list of V3 rows (kernel, exp, out, se, nl, stride)")
    out = []
    for i, row in enumerate(rows):
        ok = isinstance(row, (list, tuple)) and len(row) == 6
        if ok:
            k, exp, c, se, nl, stride = row
            ok = (k in (3, 5, 7) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (exp, c))
                  and isinstance(se, bool) and nl in V3_ACT and stride in (1, 2))
        if not ok:
            raise MobileNetsError(f"blocks[{i}]={row!r}: a V3 row is (kernel 3/5/7, exp >= 1, out >= 1, "
                                  "se true/false, nl 'RE'/'HS', stride 1/2)")
        out.append(tuple(row))
    return out


def _check_v3_options(family: str, rows: int, minimalistic: bool, hswish_from, last_stage: str,
                      reduced_tail: bool) -> None:
    if last_stage not in LAST_STAGES:
        raise MobileNetsError(f"last_stage={last_stage!r} is not one of {', '.join(map(repr, LAST_STAGES))}")
    if hswish_from is not None and (not isinstance(hswish_from, int) or isinstance(hswish_from, bool)
                                    or not 0 <= hswish_from <= rows + 2):
        raise MobileNetsError(f"hswish_from={hswish_from!r} is out of range for {family}; allowed: "
                              f"None (the table's) or an integer 0..{rows + 2} (0: h-swish "
                              f"everywhere, {rows + 2}: ReLU everywhere)")
    if hswish_from is not None and minimalistic:
        raise MobileNetsError("hswish_from and minimalistic=True conflict: minimalistic uses ReLU "
                              "everywhere")
    if last_stage == "original" and (family != "mobilenet_v3_large" or reduced_tail):
        raise MobileNetsError("last_stage='original' is V3-Large's stage before §5.3's redesign "
                              f"(Figure 5); {family}{' with reduced_tail' if reduced_tail else ''} "
                              "has no such stage in the paper")


def _v3_blocks(table, w: float, minimalistic: bool, proj_act: str | None, shortcut: str,
               stem: int, stem_table: int, expand_ratio: float | None, halve_from: int,
               acts: list[str]):
    # The reference code states each expansion as a ratio of the block's actual input width
    # (`expand_input(3)` for 72 = 3·24), so under α it follows the rounded input, not exp·α;
    # blocks from `halve_from` on have half the table's outputs (reduced_tail).
    blocks, in_ch, table_in = [], stem, stem_table
    for i, (k, exp, c, se, _nl, s) in enumerate(table):
        ratio = exp / table_in if expand_ratio is None or exp == table_in else expand_ratio
        out = make_divisible(c * w / (2 if i >= halve_from else 1))
        exp_ch = in_ch if ratio == 1 else make_divisible(in_ch * ratio)
        use_se = se and not minimalistic
        blocks.append(BlockSpec(
            in_ch, out, exp_ch, 3 if minimalistic else k, s,
            se_ch=make_divisible(exp_ch / 4) if use_se else 0,
            act=acts[i], proj_act=proj_act, shortcut=shortcut))
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
               fixed_stem: bool = False, head_channels: int | None = None,
               reduced_tail: bool = False, full_conv: bool = False,
               shallow: bool = False, last_stage: str = "efficient",
               hswish_from: int | None = None, blocks: list | None = None) -> Arch:
    """Resolve a family's table and options into an `Arch`.

    proj_act: activation after the 1×1 projection; "default" is the paper's choice
    (linear for V2/V3, ReLU for V1), or None / "relu6" / "relu" for the V2 Fig. 6a ablation.
    expand_ratio: replaces the expansion t of every block that expands (V2 ablation).
    act: the one nonlinearity of V1/V2 (None = the paper's: ReLU for V1, ReLU6 for V2). The
    TensorFlow V1 reference (slim, Keras) and timm use ReLU6, so their weights need act="relu6".
    fixed_stem: keep the stem at the table's width whatever the multiplier, as Keras' V3 always
    does and timm's V3 below α 0.75 (mobilenetv3_small_050). V4 keeps it below α 1 regardless.
    head_channels: width of V3's layer after pooling (None: the table's 1280 / 1024). The first
    arXiv revision of the V3 paper gave V3-Small a 1280-wide one (its Table 9: 2.9M parameters).
    Like the reference code (slim's finegrain_classification_mode) and timm, no multiplier
    scales it.
    reduced_tail: V3's task backbones (§6.3, §6.4; slim's V3_*_DETECTION, torchvision's
    reduced_tail): the outputs of the last stage (from its stride-2 block on) and of the 1×1
    conv before pooling halved; expansions follow as ratios of the halved inputs.
    full_conv, shallow (V1 only): V1 Table 4's network of full 3×3 convolutions in place of the
    separable layers, and Table 5's shallow network without the five 14×14×512 layers.
    last_stage (V3-Large): "efficient", the published stage (§5.3), or "original", the stage it
    replaced (tables.V3_LARGE_ORIGINAL_LAST_BLOCK): one more bottleneck and the 1280-wide layer
    before pooling instead of after it.
    hswish_from (V3): where h-swish starts, as an index into [stem, bneck rows, last stage]
    (`v3_layer_acts`); None keeps the tables' NL column.
    blocks (V3): bneck rows (kernel, exp size, out, SE, NL, s) in place of the paper's table,
    e.g. an architecture found by `mobilenets search` (`check_v3_rows`).
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
    if reduced_tail and not family.startswith("mobilenet_v3"):
        raise MobileNetsError(f"reduced_tail=True applies to MobileNetV3's last stage, not {family}")
    if head_channels is not None:
        if not family.startswith("mobilenet_v3"):
            raise MobileNetsError(f"head_channels={head_channels!r} applies to MobileNetV3 (its layer "
                                  f"after pooling), not {family}")
        if not isinstance(head_channels, int) or isinstance(head_channels, bool) or head_channels < 1:
            raise MobileNetsError(f"head_channels={head_channels!r} is out of range; allowed: integer >= 1")
    if (hswish_from is not None or last_stage != "efficient") and not family.startswith("mobilenet_v3"):
        raise MobileNetsError(f"hswish_from and last_stage are MobileNetV3 options, not {family}'s")
    if blocks is not None and not family.startswith("mobilenet_v3"):
        raise MobileNetsError(f"blocks= takes MobileNetV3 rows; {family} has its own table")
    if (full_conv or shallow) and family != "mobilenet_v1":
        raise MobileNetsError(f"full_conv and shallow are MobileNetV1's Table 4 and 5 variants; "
                              f"{family} has no such option")
    if full_conv and (proj_act != "default" or shortcut != "bottleneck"):
        raise MobileNetsError("full_conv=True has no projection nor shortcut to set: each layer "
                              "is one 3×3 conv; leave proj_act and shortcut at their defaults")
    if dropout is not None and not 0 <= dropout < 1:
        raise MobileNetsError(f"dropout={dropout!r} is out of range; allowed: 0 <= dropout < 1")

    if family == "mobilenet_v1":
        if expand_ratio is not None:
            raise MobileNetsError("expand_ratio applies to MobileNetV2/V3 blocks; V1 has no expansion")
        act = act or "relu"
        stem = V1_STEM if fixed_stem else max(int(V1_STEM * w), 8)
        blocks = _v1_blocks(w, act, act if proj_act == "default" else proj_act,
                            "none" if shortcut == "bottleneck" else shortcut, stem,
                            full_conv, shallow)
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
        table, head, last = ((V3_LARGE_BLOCKS, V3_LARGE_HEAD, V3_LARGE_LAST_CONV) if large
                             else (V3_SMALL_BLOCKS, V3_SMALL_HEAD, V3_SMALL_LAST_CONV))
        if blocks is not None:
            table = check_v3_rows(blocks)
        stem_table = V3_LARGE_STEM if large else V3_SMALL_STEM
        stem = stem_table if fixed_stem else make_divisible(stem_table * w)
        _check_v3_options(family, len(table), minimalistic, hswish_from, last_stage, reduced_tail)
        acts = v3_layer_acts(len(table), minimalistic, hswish_from, [V3_ACT[row[4]] for row in table])
        halve_from = len(table)
        if reduced_tail:
            halve_from = max(i for i, row in enumerate(table) if row[5] > 1)
            last //= 2
        blocks = _v3_blocks(table, w, minimalistic, None if proj_act == "default" else proj_act,
                            shortcut, stem, stem_table, expand_ratio, halve_from, acts[1:-1])
        stem_act, act = acts[0], acts[-1]
        # slim scales the last conv as a layer of its own (make_divisible(576·α), 200 channels
        # for Small 0.35, where 6 × the rounded last block gives 192) and, in the
        # finegrain_classification_mode its published widths use, never the layer after pooling.
        arch = dict(stem_ch=stem, stem_act=stem_act, last_conv_act=act,
                    last_conv_ch=make_divisible(last * w),
                    head_ch=head if head_channels is None else head_channels, head_act=act,
                    split_expansions=True)
        if last_stage == "original":
            k, exp, c, _se, _nl, s = V3_LARGE_ORIGINAL_LAST_BLOCK
            in_ch = blocks[-1].out_ch
            blocks.append(BlockSpec(in_ch, make_divisible(c * w),
                                    make_divisible(in_ch * exp / table[-1][2]), k, s, act=act,
                                    proj_act=None if proj_act == "default" else proj_act,
                                    shortcut=shortcut))
            # Like the published 1280-wide layer, no multiplier scales it.
            arch.update(last_conv_ch=V3_LARGE_ORIGINAL_LAST_CONV if head_channels is None
                        else head_channels, head_ch=None, head_act=None)

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
