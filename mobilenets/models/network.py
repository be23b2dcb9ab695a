"""One model class for every MobileNet, built from a resolved `Arch`, with the conventions timm's
and torchvision's users rely on: global pooling choices, stochastic depth, gradient
checkpointing, intermediate features, TorchScript."""

# Annotations stay types, not strings (no `from __future__ import annotations`): TorchScript
# reads them, also in the code torchvision's FX feature extractor generates from these forwards.
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from ..core.errors import MobileNetsError
from .features import FeatureInfo, feature_levels
from .layers import ConvBNAct, InvertedResidual, MultiQueryAttention, make_activation
from .specs import Arch, AttentionSpec, ConvSpec

GLOBAL_POOLS = ("avg", "max", "avgmax", "")


def build_block(spec, **norm) -> nn.Module:
    """The module of one block spec: an inverted residual (V1–V4), a V4 attention block, or a
    plain conv-BN-act row."""
    if isinstance(spec, ConvSpec):
        return ConvBNAct(spec.in_ch, spec.out_ch, spec.kernel, spec.stride, dilation=spec.dilation,
                         act=spec.act, **norm)
    if isinstance(spec, AttentionSpec):
        return MultiQueryAttention(spec.in_ch, spec.out_ch, spec.heads, spec.key_dim,
                                   spec.value_dim, spec.kv_stride, spec.kv_kernel, spec.dilation,
                                   spec.layer_scale, spec.shortcut, **norm)
    return InvertedResidual(spec.in_ch, spec.out_ch, spec.expand_ch, spec.kernel, spec.stride,
                            spec.dilation, spec.se_ch, spec.act, spec.proj_act, spec.shortcut,
                            **norm, start_kernel=spec.start_kernel,
                            expand_kernel=spec.expand_kernel, layer_scale=spec.layer_scale,
                            expand_conv=spec.expand_conv)


class AvgMaxPool(nn.Module):
    """The mean of global average and global max pooling (timm's "avgmax")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))


def _make_pool(pool_type: str = "avg") -> nn.Module:
    """timm's global pooling choices: "avg", "max", "avgmax", or "" (none: the map passes
    unpooled). A pooling layer and nn.Flatten, the layers the profiler and the ExecuTorch
    export know."""
    if pool_type not in GLOBAL_POOLS:
        raise MobileNetsError(f"global_pool={pool_type!r} is not one of "
                              f"{', '.join(map(repr, GLOBAL_POOLS))}")
    if pool_type == "":
        return nn.Identity()
    pool = {"avg": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1), "avgmax": AvgMaxPool()}
    return nn.Sequential(pool[pool_type], nn.Flatten(1))


def set_drop_path(blocks: nn.Sequential, rate: float, depth: int) -> None:
    """Stochastic depth on every block with a shortcut, its rate rising linearly with the
    block's depth: block i drops with rate·i/depth, as timm's EfficientNet builder does, whose
    depth counts V3's and V4's last 1×1 conv (its last stage) as a block."""
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1):
        raise MobileNetsError(f"drop_path_rate={rate!r} is out of range; allowed: 0 <= rate < 1")
    for i, block in enumerate(blocks):
        if getattr(block, "residual", False) and rate > 0:
            block.drop_path = StochasticDepth(rate * i / depth, "row")
        elif hasattr(block, "drop_path"):
            block.drop_path = nn.Identity()


class MobileNet(nn.Module):
    """stem → blocks → [last 1×1 conv] → pool → [V3/V4 head layer] → dropout → classifier.

    With `features_only=True` the model is a feature extractor: only the stem and blocks (and
    with `keep_last_conv` the last 1×1 conv) are built, `forward` returns the maps of the levels
    in `out_indices` (indices into `feature_levels`, default all) as a list, `forward_features`
    the deepest of them, and `feature_info` describes them (module, channels, stride). It has
    no head: `forward_head`, `get_classifier` and `reset_classifier` raise MobileNetsError.

    As in timm, `num_features` is the width of `forward_features`' map and `head_hidden_size`
    the width of the pre-logits vector the classifier reads (V3's and V4's 1280-wide head
    layer; else the pooled map).
    """
    __constants__ = ["features_only", "grad_checkpointing"]
    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, arch: Arch, num_classes: int = 1000, in_chans: int = 3,
                 features_only: bool = False, out_indices: tuple[int, ...] | None = None,
                 padding: str = "symmetric", bn_eps: float = 1e-5, bn_momentum: float = 0.1,
                 feature_location: str = "bottleneck", keep_last_conv: bool = False,
                 pool_type: str = "avg", drop_path_rate: float = 0.0):
        super().__init__()
        self.arch = arch
        norm = dict(padding=padding, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.stem = ConvBNAct(in_chans, arch.stem_ch, 3, arch.stem_stride, act=arch.stem_act, **norm)
        self.blocks = nn.Sequential(*[build_block(b, **norm) for b in arch.blocks])
        set_drop_path(self.blocks, drop_path_rate,
                      len(self.blocks) + bool(arch.last_conv_ch and arch.head_ch))
        self.features_only = features_only
        self.grad_checkpointing = False
        ch = arch.blocks[-1].out_ch
        if features_only:
            levels = feature_levels(arch, feature_location, keep_last_conv)
            n = len(levels)
            out_indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
            bad = [i for i in out_indices if not -n <= i < n]
            if bad or not out_indices:
                raise MobileNetsError(f"out_indices={out_indices!r} is out of range; allowed: 0..{n - 1}")
            self.out_indices = tuple(i % n for i in out_indices)
            self.feature_info = FeatureInfo(levels[i] for i in self.out_indices)
            self.num_features = self.feature_info[-1]["num_chs"]
            self.head_hidden_size = self.num_features
            wanted = {info["module"] for info in self.feature_info}
            if "last_conv" in wanted:
                self.last_conv = ConvBNAct(ch, arch.last_conv_ch, 1, act=arch.last_conv_act, **norm)
            # Blocks past the deepest requested level are not built: they would hold weights
            # that no output depends on.
            deepest = max(info["index"] for info in self.feature_info)
            del self.blocks[deepest:]
        else:
            self.feature_info = FeatureInfo(feature_levels(arch))
            self.last_conv = (ConvBNAct(ch, arch.last_conv_ch, 1, act=arch.last_conv_act, **norm)
                              if arch.last_conv_ch else nn.Identity())
            ch = arch.last_conv_ch or ch
            self.num_features = ch
            self.pool = _make_pool(pool_type)
            self.global_pool = pool_type
            if arch.head_ch and arch.head_norm:
                # V4 keeps batch norm there (and so no bias): a conv-BN-act unit on the 1×1 map.
                self.head = nn.Sequential(
                    nn.Linear(ch, arch.head_ch, bias=False),
                    nn.BatchNorm1d(arch.head_ch, eps=bn_eps, momentum=bn_momentum),
                    make_activation(arch.head_act))
            else:
                # V3's efficient last stage: the widest layer works on the pooled 1×1 map, without BN.
                self.head = (nn.Sequential(nn.Linear(ch, arch.head_ch), make_activation(arch.head_act))
                             if arch.head_ch else nn.Identity())
            self.head_hidden_size = arch.head_ch or ch
            self._check_pool(pool_type, num_classes)
            self.dropout = nn.Dropout(arch.dropout)
            self.classifier = (nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0
                               else nn.Identity())
        self._init_weights()

    @property
    def default_cfg(self) -> dict:
        """timm's older name of `pretrained_cfg`."""
        return self.pretrained_cfg

    def _check_pool(self, global_pool: str, num_classes: int) -> None:
        # An unpooled map has no vector for V3's/V4's head layer or a classifier to read.
        if global_pool == "" and (num_classes > 0 or self.arch.head_ch):
            raise MobileNetsError(f"global_pool='' leaves the map unpooled: it needs num_classes=0 "
                                  f"and a model without a head layer ({self.arch.family} has "
                                  f"{'one' if self.arch.head_ch else 'none'}); use forward_features "
                                  "for the unpooled map of any model")

    def _init_weights(self) -> None:
        # As torchvision's MobileNets do: He init (fan-out) for convs, N(0, 0.01) for linears.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them (timm's
        switch): less training memory for about one more forward pass."""
        self.grad_checkpointing = enable

    @torch.jit.unused
    def _checkpointed_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.features_only:
            return self.forward_levels(x)[-1]
        x = self.stem(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            x = self._checkpointed_blocks(x)
        else:
            x = self.blocks(x)
        return self.last_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        self._check_head("forward_head")
        x = self.head(self.pool(x))
        return x if pre_logits else self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_levels(x)
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps of `feature_info`'s levels, in its order."""
        maps: dict[str, torch.Tensor] = {}
        wanted = {info["module"] for info in self.feature_info}
        # An expansion is a tensor inside a block: a hook keeps it as the block computes it, so
        # the block runs once and as InvertedResidual defines it.
        handles = [self.get_submodule(name).register_forward_hook(
                       lambda module, inputs, out, name=name: maps.__setitem__(name, out))
                   for name in wanted if name.endswith(".expand")]
        try:
            x = self.stem(x)
            if "stem" in wanted:
                maps["stem"] = x
            for i, block in enumerate(self.blocks):
                x = block(x)
                if f"blocks.{i}" in wanted:
                    maps[f"blocks.{i}"] = x
            if "last_conv" in wanted:
                maps["last_conv"] = self.last_conv(x)
        finally:
            for handle in handles:
                handle.remove()
        return [maps[info["module"]] for info in self.feature_info]

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              stop_early: bool = False, intermediates_only: bool = False):
        """timm's API: the maps of the `feature_info` levels named by `indices` (a list of
        level indices, or n for the last n; default all) and the final features, as
        (final, [maps]); `intermediates_only` returns the maps alone, `stop_early` stops at the
        deepest one asked for."""
        levels = list(self.feature_info)
        n = len(levels)
        if indices is None:
            chosen = list(range(n))
        elif isinstance(indices, int):
            if not 0 < indices <= n:
                raise MobileNetsError(f"indices={indices} is out of range; allowed: 1..{n}")
            chosen = list(range(n - indices, n))
        else:
            chosen = [i % n if -n <= i < n else -1 for i in indices]
            if -1 in chosen:
                raise MobileNetsError(f"indices={indices!r} is out of range; allowed: 0..{n - 1}")
        at = {levels[i]["index"]: i for i in chosen}
        maps: dict[int, torch.Tensor] = {}
        layers = [self.stem, *self.blocks] + ([self.last_conv] if not self.features_only or
                                                hasattr(self, "last_conv") else [])
        deepest = max(at) if stop_early else len(layers) - 1
        for index, layer in enumerate(layers[:deepest + 1]):
            x = layer(x)
            if index in at:
                maps[at[index]] = x
        out = [maps[i] for i in chosen]
        return out if intermediates_only else (x, out)

    def get_classifier(self) -> nn.Module:
        self._check_head("get_classifier")
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for `num_classes` (0: none, the pre-logits vector comes out), and
        with `global_pool` another pooling."""
        self._check_head("reset_classifier")
        if global_pool is not None:
            self._check_pool(global_pool, num_classes)
            self.pool = _make_pool(global_pool)
        self.classifier = (nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0
                           else nn.Identity())

    def _check_head(self, method: str) -> None:
        if self.features_only:
            raise MobileNetsError(f"{method}: a features_only model has no head (no pooling, "
                                  "classifier or last layers); build it without features_only")
