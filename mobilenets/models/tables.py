"""The papers' architecture tables, as tables: rows you can hold next to V1 Table 1, V2 Table 2,
V3 Tables 1 and 2, and V4's appendix tables of Conv-S, Conv-M, Conv-L, Hybrid-M and Hybrid-L;
and, at the end, the reference code's accuracy tables over width and resolution.
`specs.build_arch` resolves the architecture tables into per-block specs. Plain Python: no torch."""
from __future__ import annotations

from dataclasses import dataclass

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
# V1 Table 5's shallow MobileNet: Table 1 without the five separable layers at 14×14×512.
V1_SHALLOW_BLOCKS = [
    (1, 64),
    (2, 128), (1, 128),
    (2, 256), (1, 256),
    (2, 512),
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
# The efficient last stage: a 1×1 conv before pooling (6× the last block's width at α = 1).
V3_LARGE_LAST_CONV = 960
V3_SMALL_LAST_CONV = 576

# V3 §5.3, Figure 5: the original last stage the efficient one replaced (V3-Large). After the
# last bneck, one more V2-style bottleneck at 7×7 (1×1 expansion to 960, 3×3 depthwise, linear
# 1×1 projection to 320), then a 1×1 conv to 1280 still at 7×7, then pooling and the classifier.
# The efficient stage keeps the expansion as the conv before pooling, drops the depthwise and
# projection layers and moves the 1280-wide layer after pooling. Row as in V3_LARGE_BLOCKS.
V3_LARGE_ORIGINAL_LAST_BLOCK = (3, 960, 320, False, "HS", 1)
V3_LARGE_ORIGINAL_LAST_CONV = 1280   # at 7×7, before pooling; nothing between pooling and classifier

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
class BatchNormDefaults:
    eps: float
    reference_momentum: float   # PyTorch's sense (1 − TensorFlow's decay), as the source trains
    source: str
    # What `create_model` uses unless told: the reference decays average over 100-3,000 steps
    # and start from mean 0 / variance 1, so a run of a few hundred steps would evaluate with
    # statistics that are still mostly that start (the 100-step SSDLite fit of
    # tests/train/test_tasks.py fails at 0.003). Long runs pass bn_momentum (model_options).
    momentum: float = 0.1


# Batch norm of each family as its paper or reference implementation trains it (docs/paper_tables.md,
# "Batch norm per family"). slim's own V1 scope decays 0.9997; the shared MobileNet training
# scope (V2, V3) 0.997.
BN_DEFAULTS = {
    "mobilenet_v1": BatchNormDefaults(1e-3, 0.0003, "slim mobilenet_v1 scope: eps 1e-3, decay 0.9997"),
    "mobilenet_v2": BatchNormDefaults(1e-3, 0.003, "slim mobilenet.training_scope: eps 1e-3, "
                                      "decay 0.997"),
    "mobilenet_v3": BatchNormDefaults(1e-3, 0.01, "V3 paper §6.1: decay 0.99; torchvision: eps 1e-3, "
                                      "momentum 0.01"),
    "mobilenet_v4": BatchNormDefaults(1e-5, 0.1, "timm: PyTorch's BatchNorm2d defaults"),
}


def bn_defaults(family: str) -> BatchNormDefaults:
    """The batch norm of a family name such as "mobilenet_v3_small" (its version's row)."""
    return BN_DEFAULTS["_".join(family.split("_")[:2])]


# The reference code's checkpoint tables over width α and resolution ρ: (α, ρ) → (million MACs,
# ImageNet top-1 %), float checkpoints. TF-slim's mobilenet_v1.md and mobilenet/README.md; the
# papers print only slices of them (V1 Tables 6 and 7, V2 Fig. 5).
V1_CHECKPOINTS = {
    (1.0, 224): (569, 70.9), (1.0, 192): (418, 70.0), (1.0, 160): (291, 68.0), (1.0, 128): (186, 65.2),
    (0.75, 224): (317, 68.4), (0.75, 192): (233, 67.2), (0.75, 160): (162, 65.3),
    (0.75, 128): (104, 62.1),
    (0.5, 224): (150, 63.3), (0.5, 192): (110, 61.7), (0.5, 160): (77, 59.1), (0.5, 128): (49, 56.3),
    (0.25, 224): (41, 49.8), (0.25, 192): (34, 47.7), (0.25, 160): (21, 45.5), (0.25, 128): (14, 41.5),
}
V2_CHECKPOINTS = {
    (1.4, 224): (582, 75.0), (1.3, 224): (509, 74.4),
    (1.0, 224): (300, 71.8), (1.0, 192): (221, 70.7), (1.0, 160): (154, 68.8), (1.0, 128): (99, 65.3),
    (1.0, 96): (56, 60.3),
    (0.75, 224): (209, 69.8), (0.75, 192): (153, 68.7), (0.75, 160): (107, 66.4),
    (0.75, 128): (69, 63.2), (0.75, 96): (39, 58.8),
    (0.5, 224): (97, 65.4), (0.5, 192): (71, 63.9), (0.5, 160): (50, 61.0), (0.5, 128): (32, 57.7),
    (0.5, 96): (18, 51.2),
    (0.35, 224): (59, 60.3), (0.35, 192): (43, 58.2), (0.35, 160): (30, 55.7),
    (0.35, 128): (20, 50.8), (0.35, 96): (11, 45.5),
}
