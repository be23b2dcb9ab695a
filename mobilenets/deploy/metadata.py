"""The mobilenets metadata every exported file carries: one JSON document (key / extra file /
constant method `mobilenets.json`) that lets `Predictor` feed a file and name its classes without
the checkpoint. Kept apart from the exporters so that each format's module can read and write it.
"""
from __future__ import annotations

import json

from torch import nn

from ..core.errors import MobileNetsError

METADATA_KEY = "mobilenets.json"


def preprocessing_of(model: nn.Module, meta: dict | None = None) -> dict:
    """The preprocessing a checkpoint records, else the model's pretrained_cfg."""
    if meta and meta.get("preprocessing"):
        return dict(meta["preprocessing"])
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    res = int(cfg.get("resolution", 224))
    return dict(resolution=res, resize=int(round(res / cfg.get("crop_pct", 1.0))),
                mean=list(cfg.get("mean", (0.0,))), std=list(cfg.get("std", (1.0,))),
                in_chans=int(cfg.get("in_chans", 3)),
                interpolation=cfg.get("interpolation", "bilinear"))


def export_metadata(model: nn.Module, meta: dict | None = None, precision: str = "fp32") -> dict:
    meta = meta or {}
    pre = preprocessing_of(model, meta)
    return {
        "format": "mobilenets/1",
        "model": meta.get("model", getattr(model, "model_name", type(model).__name__)),
        "model_kwargs": meta.get("model_kwargs", getattr(model, "model_kwargs", {})),
        "classes": meta.get("classes", getattr(model, "classes", None)),
        "preprocessing": pre,
        "precision": precision,
        "input_shape": [pre["in_chans"], pre["resolution"], pre["resolution"]],
    }


def parse_meta(text: str | bytes | None, path) -> dict:
    if not text:
        raise MobileNetsError(f"{path}: has no mobilenets metadata ({METADATA_KEY}); "
                              "export it with `mobilenets export`")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):   # a damaged header gives either
        raise MobileNetsError(f"{path}: its {METADATA_KEY} metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != "mobilenets/1":
        raise MobileNetsError(f"{path}: its metadata is not mobilenets/1")
    return meta
