"""The model metadata timm's and torchvision's tools read, filled from the model itself."""
from __future__ import annotations


def model_cfg(model, resolution: int, in_chans: int, num_classes: int, mean, std) -> dict:
    """`pretrained_cfg` as timm lays it out: `timm.data.resolve_data_config(model=m)` reads
    input_size, crop_pct, interpolation, mean and std from it; feature tools read first_conv and
    classifier (module names), pool_size (the last map's side at `resolution`)."""
    stride = getattr(getattr(model, "arch", None), "total_stride", 32)
    side = max(resolution // stride, 1)
    return dict(resolution=resolution, input_size=(in_chans, resolution, resolution),
                num_classes=num_classes, pool_size=(side, side), first_conv="stem.conv",
                classifier="classifier", crop_pct=0.875, mean=tuple(mean), std=tuple(std),
                in_chans=in_chans, interpolation="bilinear")



def with_input_size(cfg: dict) -> dict:
    """`cfg` with input_size following its resolution and in_chans (after a weights file's
    preprocessing replaced them: a model trained at 28 px says 28 to timm's tools too)."""
    if "resolution" in cfg and "in_chans" in cfg:
        cfg["input_size"] = (cfg["in_chans"], cfg["resolution"], cfg["resolution"])
    return cfg

_TIMM = {"bn_eps": 1e-5}
_TF = {"padding": "same", "bn_eps": 1e-3}
_V1 = {"bn_eps": 1e-5, "act": "relu6"}
# timm's model names as ours with the options that make the same network (timm's BN epsilon,
# TF padding for its tf_ ports, ReLU6 in its V1); `convert.MODEL_OPTIONS` says the same of
# their weights.
TIMM_NAMES: dict[str, tuple[str, dict]] = {
    "mobilenetv1_100": ("mobilenet_v1", _V1),
    "mobilenetv1_125": ("mobilenet_v1", {**_V1, "width_mult": 1.25}),
    **{f"mobilenetv2_{w}": ("mobilenet_v2" if w == "100" else f"mobilenet_v2_{w}", _TIMM)
       for w in ("035", "050", "075", "100", "140")},
    **{f"mobilenetv3_{size}_{w}": (f"mobilenet_v3_{size}" + ("" if w == "100" else f"_{w}"), _TIMM)
       for size in ("large", "small") for w in ("050", "075", "100")},
    **{f"tf_mobilenetv3_{size}_{w}": (f"mobilenet_v3_{size}" + ("" if w == "100" else f"_{w}"), _TF)
       for size in ("large", "small") for w in ("075", "100")},
    "tf_mobilenetv3_large_minimal_100": ("mobilenet_v3_large_minimal", _TF),
    "tf_mobilenetv3_small_minimal_100": ("mobilenet_v3_small_minimal", _TF),
    **{f"mobilenetv4_{kind}": (f"mobilenet_v4_{kind}", _TIMM)
       for kind in ("conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large")},
    "mobilenetv4_conv_small_050": ("mobilenet_v4_conv_small_050", _TIMM),
}
