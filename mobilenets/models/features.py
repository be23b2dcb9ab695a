"""The feature levels a `features_only` MobileNet can return."""
from __future__ import annotations

from ..core.errors import MobileNetsError
from .specs import Arch


FEATURE_LOCATIONS = ("bottleneck", "expansion")


class FeatureInfo(list):
    """A list of {"module", "num_chs", "reduction", "index"} that answers timm's feature-info
    calls: `.channels()`, `.reduction()`, `.module_name()` (all levels, or level `idx`)."""

    def _get(self, key: str, idx: int | None):
        return [info[key] for info in self] if idx is None else self[idx][key]

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)

    def get_dicts(self) -> list[dict]:
        return list(self)


def feature_levels(arch: Arch, feature_location: str = "bottleneck",
                   keep_last_conv: bool = False) -> list[dict]:
    """Every feature level a `features_only` MobileNet of `arch` can return, shallow to deep:
    {"module", "num_chs", "reduction", "index"}, `index` counting [stem, *blocks, last_conv]
    up to the layer that computes the map.

    One level per reduction (the last layer before each stride, then the last block).
    feature_location="expansion" takes each level but the deepest at the expansion of the block
    that strides next (the wide tensor, as SSDLite's first map); keep_last_conv adds the output
    of the last 1×1 conv as one more level (the map V2's and V3's task heads use)."""
    if feature_location not in FEATURE_LOCATIONS:
        raise MobileNetsError(f"feature_location={feature_location!r} is not one of "
                              f"{', '.join(map(repr, FEATURE_LOCATIONS))}")
    strides = [arch.stem_stride]
    for b in arch.blocks:
        strides.append(strides[-1] * b.stride)
    last = len(arch.blocks)
    levels = []
    for i in arch.feature_levels:
        if feature_location == "expansion" and i < last:
            levels.append(dict(module=f"blocks.{i}.expand", num_chs=arch.blocks[i].expand_ch,
                               reduction=strides[i], index=i + 1))
        else:
            levels.append(dict(module="stem" if i == 0 else f"blocks.{i - 1}",
                               num_chs=arch.stem_ch if i == 0 else arch.blocks[i - 1].out_ch,
                               reduction=strides[i], index=i))
    if keep_last_conv:
        if not arch.last_conv_ch:
            raise MobileNetsError(f"keep_last_conv=True: {arch.family} has no last 1×1 conv")
        levels.append(dict(module="last_conv", num_chs=arch.last_conv_ch, reduction=strides[-1],
                           index=last + 1))
    return levels
