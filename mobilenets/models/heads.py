"""Task models on MobileNet backbones: SSDLite detection (V2 §6.2), Mobile DeepLabv3 (V2 §6.3)
and LR-ASPP segmentation (V3 §6.3).

Each takes its feature maps from a `features_only` MobileNet, `backbone`, whose modules keep the
classifier's names (`backbone.stem`, `backbone.blocks.N`, `backbone.last_conv`), so the weights
of a trained classifier load into it by name (`weights.load_backbone`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .detection import anchors_per_cell, check_classification, make_anchors, postprocess
from ..core.errors import MobileNetsError
from .layers import ConvBNAct
from .mobilenet import IMAGENET_MEAN, IMAGENET_STD, feature_levels, mobilenet, register_model
from .profile import profile
from .specs import build_arch

# SSDLite's extra feature layers after the stride-32 map (TF object detection API,
# ssd_mobilenet_v2_feature_extractor: layer depths [-1, -1, 512, 256, 256, 128]).
SSD_EXTRA_DEPTHS = (512, 256, 256, 128)
SSD_MIN_DEPTH = 16
# DeepLab's ASPP: 256 channels per branch; atrous rates (6, 12, 18) at output stride 16,
# doubled at output stride 8.
ASPP_CHANNELS = 256
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
LRASPP_CHANNELS = 128


def _check_classes(num_classes, low: int) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < low:
        raise MobileNetsError(f"num_classes={num_classes!r} is out of range; allowed: integer >= {low}")


def _pretrained_cfg(resolution: int, in_chans: int, num_classes: int, classifier: str) -> dict:
    """The task model's input and outputs, laid out as timm's `pretrained_cfg` is (what
    `timm.data.resolve_data_config(model=m)` reads)."""
    return dict(resolution=resolution, input_size=(in_chans, resolution, resolution),
                num_classes=num_classes, first_conv="backbone.stem.conv", classifier=classifier,
                mean=IMAGENET_MEAN, std=IMAGENET_STD, in_chans=in_chans, interpolation="bilinear")


def _separable(in_ch: int, out_ch: int, bn_eps: float) -> nn.Sequential:
    """SSDLite's prediction layer: 3×3 depthwise (BN, ReLU6) then a 1×1 conv with bias."""
    return nn.Sequential(ConvBNAct(in_ch, in_ch, 3, groups=in_ch, bn_eps=bn_eps),
                         nn.Conv2d(in_ch, out_ch, 1))


class SSDLite(nn.Module):
    """SSD with every prediction layer depthwise separable, on a MobileNet backbone.

    Feature maps: the expansion of the block that takes the network from stride 16 to 32 (V2's
    15th layer, 576 channels; V3-Large's 13th bneck, 672), the backbone's last layer (stride 32),
    then four extra layers (1×1 conv to half depth, 3×3 depthwise stride 2, 1×1 conv).
    `forward` returns class logits (B, N, num_classes, background first) and box deltas (B, N, 4)
    for the N anchors of `anchors(image_size)`; `detect` turns them into boxes.
    `classification` is how the logits become scores, in training and detection alike:
    "softmax" (default) or "sigmoid", the reference config's (`detection.CLASSIFICATIONS`).
    """
    task = "detection"

    def __init__(self, backbone: str = "mobilenet_v2", num_classes: int = 91,
                 width_mult: float = 1.0, in_chans: int = 3, minimalistic: bool = False,
                 bn_eps: float = 1e-3, classification: str = "softmax", reduced_tail: bool = False):
        super().__init__()
        _check_classes(num_classes, 2)
        self.classification = check_classification(classification)
        extra = dict(minimalistic=True) if minimalistic else {}
        if reduced_tail:
            extra["reduced_tail"] = True   # V3 Table 6's "†" rows
        # The stride-16 level taken at the expansion of the block that strides to 32, and the
        # last 1×1 conv's output.
        self.backbone = mobilenet(backbone, width_mult, in_chans=in_chans, bn_eps=bn_eps,
                                  features_only=True, out_indices=(-3, -1),
                                  feature_location="expansion", keep_last_conv=True, **extra)
        self.arch, self.num_classes = self.backbone.arch, num_classes
        first = self.backbone.feature_info[0]["module"]
        if not isinstance(self.backbone.get_submodule(first), ConvBNAct):
            raise MobileNetsError(f"{backbone}: {first} is no expansion layer to attach SSDLite to")
        chans = [info["num_chs"] for info in self.backbone.feature_info]
        extras = []
        for d in SSD_EXTRA_DEPTHS:
            d = max(int(d * width_mult), SSD_MIN_DEPTH)
            half = d // 2
            extras.append(nn.Sequential(
                ConvBNAct(chans[-1], half, 1, bn_eps=bn_eps),
                ConvBNAct(half, half, 3, 2, groups=half, bn_eps=bn_eps),
                ConvBNAct(half, d, 1, bn_eps=bn_eps)))
            chans.append(d)
        self.extras = nn.ModuleList(extras)
        self.num_anchors = anchors_per_cell(len(chans))
        self.box_heads = nn.ModuleList(_separable(c, a * 4, bn_eps) for c, a in zip(chans, self.num_anchors))
        self.cls_heads = nn.ModuleList(_separable(c, a * num_classes, bn_eps)
                                       for c, a in zip(chans, self.num_anchors))
        self.feature_channels = chans
        self.pretrained_cfg = _pretrained_cfg(320, in_chans, num_classes, "cls_heads")
        self._init_heads()

    def _init_heads(self) -> None:
        for m in [*self.extras.modules(), *self.box_heads.modules(), *self.cls_heads.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        for layer in self.extras:
            feats.append(layer(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = [], []
        n = x.shape[0]
        for f, box_head, cls_head in zip(self.features(x), self.box_heads, self.cls_heads):
            # (B, A·k, H, W) → (B, H·W·A, k): anchors ordered by row, column, cell shape.
            deltas.append(box_head(f).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(cls_head(f).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        return torch.cat(logits, 1), torch.cat(deltas, 1)

    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Every stride-2 layer here maps n to ceil(n / 2)."""
        def down(n: int, times: int) -> int:
            for _ in range(times):
                n = (n + 1) // 2
            return n
        h, w = image_size
        sizes = [(down(h, 4), down(w, 4))]
        for _ in range(len(self.feature_channels) - 1):
            h0, w0 = sizes[-1]
            sizes.append(((h0 + 1) // 2, (w0 + 1) // 2))
        return sizes

    def anchors(self, image_size: tuple[int, int]) -> torch.Tensor:
        return make_anchors(self.feature_sizes(image_size), image_size)

    @torch.no_grad()
    def detect(self, x: torch.Tensor, **kwargs) -> list[dict[str, torch.Tensor]]:
        """Boxes (pixels of `x`), scores and labels per image; kwargs go to `postprocess`."""
        logits, deltas = self(x)
        size = tuple(x.shape[-2:])
        return postprocess(logits, deltas, self.anchors(size), size, self.classification, **kwargs)


class ASPP(nn.Module):
    """DeepLabv3's head as the DeepLab code builds it for MobileNetV2: image pooling and 1×1
    branches, optionally three 3×3 atrous branches, concatenated and projected to 256."""

    def __init__(self, in_ch: int, rates: tuple[int, ...] = (), channels: int = ASPP_CHANNELS,
                 bn_eps: float = 1e-5):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                  ConvBNAct(in_ch, channels, 1, act="relu", bn_eps=bn_eps))
        self.branches = nn.ModuleList(
            [ConvBNAct(in_ch, channels, 1, act="relu", bn_eps=bn_eps)]
            + [ConvBNAct(in_ch, channels, 3, dilation=r, act="relu", bn_eps=bn_eps) for r in rates])
        self.project = ConvBNAct(channels * (len(rates) + 2), channels, 1, act="relu", bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([pooled, *(b(x) for b in self.branches)], 1))


class DeepLabV3(nn.Module):
    """Mobile DeepLabv3 (V2 Table 7, "MNet V2*"): the head on the 320-channel map of the last
    bottleneck, atrous convolution for output stride 16 or 8. aspp=False keeps only the image
    pooling and 1×1 branches (the DeepLab code's MobileNetV2 default)."""
    task = "segmentation"

    def __init__(self, backbone: str = "mobilenet_v2", num_classes: int = 21,
                 output_stride: int = 16, aspp: bool = True, width_mult: float = 1.0,
                 in_chans: int = 3, dropout: float = 0.1):
        super().__init__()
        _check_classes(num_classes, 1)
        if output_stride not in ASPP_RATES:
            raise MobileNetsError(f"output_stride={output_stride!r} is not one of 8, 16")
        self.backbone = mobilenet(backbone, width_mult, in_chans=in_chans,
                                  output_stride=output_stride, features_only=True, out_indices=(-1,))
        self.arch, self.num_classes = self.backbone.arch, num_classes
        self.aspp = ASPP(self.backbone.num_features, ASPP_RATES[output_stride] if aspp else ())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)
        self.pretrained_cfg = _pretrained_cfg(512, in_chans, num_classes, "classifier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.dropout(self.aspp(self.backbone.forward_features(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


# LR-ASPP's gate as the paper pools it (V3 §6.4, Fig. 10): a 49×49 window with stride (16, 20)
# on the 1024×2048 Cityscapes crops' stride-16 map; "global" pools the whole map.
LRASPP_POOLINGS = ("global", "paper")
LRASPP_PAPER_POOL = dict(kernel=(49, 49), stride=(16, 20))


class LRASPP(nn.Module):
    """Lite R-ASPP (V3 §6.4, Fig. 10): on the stride-16 last layer, a 1×1 conv (`channels`, BN,
    ReLU) gated by a pooled 1×1 conv with sigmoid, upsampled and classified, plus a 1×1
    classifier on the stride-8 features. `pooling` "global" (default: independent of the input
    size) or "paper" (the 49×49 window, stride (16, 20), its gate map upsampled to the features;
    the window shrinks to the map where the map is smaller). `channels` 128 or the paper's 256
    (Table 7's F); `reduced_tail` halves the backbone's last stage (Table 7's RF2)."""
    task = "segmentation"

    def __init__(self, backbone: str = "mobilenet_v3_large", num_classes: int = 21,
                 output_stride: int = 16, width_mult: float = 1.0, in_chans: int = 3,
                 minimalistic: bool = False, channels: int = LRASPP_CHANNELS,
                 reduced_tail: bool = False, pooling: str = "global"):
        super().__init__()
        _check_classes(num_classes, 1)
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise MobileNetsError(f"channels={channels!r} is out of range; allowed: integer >= 1")
        if pooling not in LRASPP_POOLINGS:
            raise MobileNetsError(f"pooling={pooling!r} is not one of {', '.join(map(repr, LRASPP_POOLINGS))}")
        extra = dict(minimalistic=True) if minimalistic else {}
        if reduced_tail:
            extra["reduced_tail"] = True
        # The last block at stride 8 and the last 1×1 conv's output (one level past the blocks').
        levels = feature_levels(build_arch(backbone, width_mult, output_stride=output_stride, **extra))
        low = max(i for i, info in enumerate(levels) if info["reduction"] == 8)
        self.backbone = mobilenet(backbone, width_mult, in_chans=in_chans,
                                  output_stride=output_stride, features_only=True,
                                  out_indices=(low, -1), keep_last_conv=True, **extra)
        self.arch, self.num_classes, self.pooling = self.backbone.arch, num_classes, pooling
        low_ch, high_ch = (info["num_chs"] for info in self.backbone.feature_info)
        self.cbr = ConvBNAct(high_ch, channels, 1, act="relu")
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1) if pooling == "global" else nn.Identity(),
                                  nn.Conv2d(high_ch, channels, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_ch, num_classes, 1)
        self.high_classifier = nn.Conv2d(channels, num_classes, 1)
        self.pretrained_cfg = _pretrained_cfg(512, in_chans, num_classes, "high_classifier")

    def _gate(self, high: torch.Tensor) -> torch.Tensor:
        if self.pooling == "global":
            return self.gate(high)
        kernel = tuple(min(k, n) for k, n in zip(LRASPP_PAPER_POOL["kernel"], high.shape[-2:]))
        pooled = F.avg_pool2d(high, kernel, LRASPP_PAPER_POOL["stride"])
        return F.interpolate(self.gate(pooled), size=high.shape[-2:], mode="bilinear",
                             align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low, high = self.backbone(x)
        y = self.cbr(high) * self._gate(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.low_classifier(low) + self.high_classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


register_model("ssdlite_mobilenet_v2", SSDLite, backbone="mobilenet_v2")
register_model("ssdlite_mobilenet_v3_large", SSDLite, backbone="mobilenet_v3_large")
register_model("ssdlite_mobilenet_v3_small", SSDLite, backbone="mobilenet_v3_small")
register_model("deeplabv3_mobilenet_v2", DeepLabV3, backbone="mobilenet_v2", num_classes=21,
               output_stride=16, aspp=True)
register_model("lraspp_mobilenet_v3_large", LRASPP, backbone="mobilenet_v3_large")
register_model("lraspp_mobilenet_v3_small", LRASPP, backbone="mobilenet_v3_small")


def reference_madds(model: nn.Module, resolution: int, scales: tuple[float, ...] = (1.0,),
                    flip: bool = False) -> int:
    """Multiply-adds as the DeepLab reference (TensorFlow) spends them, which is how V2 Table 7
    counts: an atrous conv of rate r runs through space_to_batch on a map padded up to a
    multiple of r; multi-scale inference resizes the side to (resolution - 1)·s + 1; a flip
    doubles every pass. Table 7's figures come out at the DeepLab code's 513 px crop."""
    modules = dict(model.named_modules())
    total = 0
    for s in scales:
        for layer in profile(model, int((resolution - 1) * s + 1))["layers"]:
            rate = getattr(modules[layer["name"]], "dilation", (1, 1))[0]
            _, h, w = layer["output_shape"]
            padded = -(-h // rate) * rate * (-(-w // rate) * rate)
            total += layer["madds"] * padded // (h * w)
    return total * (2 if flip else 1)


# DeepLab's multi-scale inference scales (V2 Table 7, "MF").
MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@torch.no_grad()
def segment_multi_scale(model: nn.Module, images: torch.Tensor, scales=MF_SCALES,
                        flip: bool = True) -> torch.Tensor:
    """Class probabilities (B, C, H, W) averaged over resized (side (n - 1)·s + 1, as the DeepLab
    code resizes) and left-right flipped inputs, each brought back to the input size."""
    h, w = images.shape[-2:]
    total, passes = 0, 0
    for s in scales:
        x = images if s == 1 else F.interpolate(
            images, size=(int((h - 1) * s + 1), int((w - 1) * s + 1)), mode="bilinear",
            align_corners=True)
        for flipped in ((False, True) if flip else (False,)):
            y = model(x.flip(-1) if flipped else x)
            y = y.flip(-1) if flipped else y
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            total = total + y.softmax(1)
            passes += 1
    return total / passes
