"""Channel plans: an explicit width for every layer of a resolved `Arch`, beyond the one global
multiplier α. Plain Python: no torch.

A plan is a JSON object, so it travels in a weights file's `model_kwargs` like any option:

    {"stem": 16,
     "expand": [null, 96, 144, ...],   # each block's expanded width (null: the block has none)
     "out":    [16, 24, 24, ...],      # each block's output width
     "se":     [0, 0, 0, ...],         # each block's squeeze-excite width (0: no SE)
     "last_conv": 1280,                # the 1×1 conv before pooling (null where there is none)
     "head": null}                     # V3/V4's layer after pooling (null where there is none)

Blocks joined by a shortcut add their input to their output, so their output widths are one
width: a *shortcut group* (the stem or a downsampling block and the residual blocks after it).
`shortcut_groups` names them, and a plan must give every member of a group the same width.
A block keeps the shortcut it has in the base architecture and no other: a plan that makes a
block's input and output widths equal by chance adds no residual.
"""
from __future__ import annotations

from dataclasses import replace

from ..core.errors import MobileNetsError
from .specs import Arch, AttentionSpec, BlockSpec, ConvSpec

PLAN_KEYS = ("stem", "expand", "out", "se", "last_conv", "head")


def has_expansion(spec) -> bool:
    """Whether an inverted residual computes an expansion (a 1×1 or fused conv): V1's blocks and
    V2/V3's t = 1 blocks run their depthwise conv on the input itself."""
    if not isinstance(spec, BlockSpec):
        return False
    if spec.expand_conv is not None:
        return spec.expand_conv
    return spec.expand_ch != spec.in_ch or spec.expand_kernel > 1


def joins_input(spec) -> bool:
    """Whether the block adds its input to its output (the published bottleneck shortcut)."""
    if isinstance(spec, BlockSpec):
        return spec.stride == 1 and spec.shortcut == "bottleneck" and spec.in_ch == spec.out_ch
    if isinstance(spec, AttentionSpec):
        return spec.shortcut != "none" and spec.in_ch == spec.out_ch
    return False


def shortcut_groups(arch: Arch) -> list[list[str | int]]:
    """The widths a plan must keep equal, in order: each group lists "stem" or block indices."""
    groups: list[list[str | int]] = [["stem"]]
    for i, spec in enumerate(arch.blocks):
        if joins_input(spec):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def plan_of(arch: Arch) -> dict:
    """The plan that rebuilds `arch` as it is."""
    return {"stem": arch.stem_ch,
            "expand": [b.expand_ch if has_expansion(b) else None for b in arch.blocks],
            "out": [b.out_ch for b in arch.blocks],
            "se": [b.se_ch if isinstance(b, BlockSpec) else 0 for b in arch.blocks],
            "last_conv": arch.last_conv_ch, "head": arch.head_ch}


def _width(value, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MobileNetsError(f"channel_plan {what}={value!r} is out of range; allowed: integer >= 1")
    return value


def check_plan(arch: Arch, plan) -> dict:
    """`plan` completed from `arch` (keys it leaves out keep the architecture's widths), or one
    line saying what is wrong with it."""
    if not isinstance(plan, dict):
        raise MobileNetsError(f"channel_plan={plan!r} is not a JSON object with keys {', '.join(PLAN_KEYS)}")
    unknown = sorted(set(plan) - set(PLAN_KEYS))
    if unknown:
        raise MobileNetsError(f"channel_plan has unknown keys {', '.join(unknown)}; allowed: {', '.join(PLAN_KEYS)}")
    base = plan_of(arch)
    full = {**base, **plan}
    n = len(arch.blocks)
    for key in ("expand", "out", "se"):
        if not isinstance(full[key], (list, tuple)) or len(full[key]) != n:
            raise MobileNetsError(f"channel_plan {key} has {len(full[key]) if isinstance(full[key], (list, tuple)) else 'no'} "
                                  f"entries; {arch.family} has {n} blocks")
    _width(full["stem"], "stem")
    for key in ("last_conv", "head"):
        if (full[key] is None) != (base[key] is None):
            raise MobileNetsError(f"channel_plan {key}={full[key]!r}: {arch.family} "
                                  f"{'has no such layer' if base[key] is None else 'needs a width for it'}")
        _width(full[key], key, allow_none=True)
    for i, spec in enumerate(arch.blocks):
        _width(full["out"][i], f"out[{i}]")
        exp, se = full["expand"][i], full["se"][i]
        if has_expansion(spec):
            _width(exp, f"expand[{i}]")
        elif exp is not None:
            raise MobileNetsError(f"channel_plan expand[{i}]={exp!r}: block {i} has no expansion "
                                  "(its depthwise conv runs on its input); give null")
        if base["se"][i]:
            _width(se, f"se[{i}]")
        elif se:
            raise MobileNetsError(f"channel_plan se[{i}]={se!r}: block {i} has no squeeze-excite; give 0")
    for group in shortcut_groups(arch):
        widths = {m: full["stem"] if m == "stem" else full["out"][m] for m in group}
        if len(set(widths.values())) > 1:
            shown = ", ".join(f"{'stem' if m == 'stem' else f'out[{m}]'}={w}" for m, w in widths.items())
            raise MobileNetsError(f"channel_plan breaks a shortcut group: {shown} are joined by "
                                  "shortcuts and need one width")
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in full.items()}


def apply_plan(arch: Arch, plan: dict) -> Arch:
    """`arch` with the widths of `plan` (checked by `check_plan`)."""
    full = check_plan(arch, plan)
    blocks, in_ch = [], full["stem"]
    for i, spec in enumerate(arch.blocks):
        out = full["out"][i]
        common = dict(in_ch=in_ch, out_ch=out)
        if isinstance(spec, BlockSpec):
            expands = has_expansion(spec)
            spec = replace(spec, **common, expand_ch=full["expand"][i] if expands else in_ch,
                           se_ch=full["se"][i], expand_conv=expands,
                           shortcut=spec.shortcut if joins_input(spec) or spec.shortcut != "bottleneck"
                           else "none")
        elif isinstance(spec, AttentionSpec):
            spec = replace(spec, **common, shortcut=spec.shortcut if joins_input(spec) else "none")
        elif isinstance(spec, ConvSpec):
            spec = replace(spec, **common)
        blocks.append(spec)
        in_ch = out
    return replace(arch, stem_ch=full["stem"], blocks=tuple(blocks), last_conv_ch=full["last_conv"],
                   head_ch=full["head"])


def scale_plan(plan: dict, factor: float, divisor: int = 8) -> dict:
    """Every width of `plan` times `factor`, rounded to a multiple of `divisor` (at least one):
    the plan of a uniformly thinner or wider network."""
    def scale(w):
        return w if not w else max(divisor, int(round(w * factor / divisor)) * divisor)
    return {k: [scale(w) for w in v] if isinstance(v, list) else scale(v) for k, v in plan.items()}
