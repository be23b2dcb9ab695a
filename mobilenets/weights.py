"""mobilenets' weight format: safetensors with the metadata needed to rebuild and feed the model.

The safetensors header's `__metadata__` (string to string) holds JSON values under these keys:
  format     "mobilenets/1"
  model      registered model name, e.g. "mobilenet_v2"
  model_kwargs  create_model keyword arguments, e.g. {"num_classes": 10, "in_chans": 1}
  classes    list of class names (index order)
  preprocessing  {"resolution", "resize", "mean", "std", "in_chans", "interpolation"}
Any further keys (e.g. "source", "top1") are kept as given.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import MobileNetsError
from .io import atomic_path

FORMAT = "mobilenets/1"


def save_weights(path: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None) -> None:
    """Write the model's state dict and metadata atomically."""
    meta = {"format": FORMAT, "model": getattr(model, "model_name", type(model).__name__),
            "model_kwargs": getattr(model, "model_kwargs", {})}
    meta.update(metadata or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a mobilenets safetensors file; one-line error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MobileNetsError(f"{path}: no such file")
    try:
        state = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise MobileNetsError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return state, meta


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly; on mismatch one line naming the first missing, unexpected, misshaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shaped:
        parts = [f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''} ({len(items)})"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("wrong shape", shaped)) if items]
        raise MobileNetsError(f"{source}: does not fit {getattr(model, 'model_name', 'the model')}; "
                              + "; ".join(parts))
    model.load_state_dict(state)


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    state, meta = load_weights(path)
    load_state_into(model, state, str(path))
    if "preprocessing" in meta:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **meta["preprocessing"]}
    if "classes" in meta:
        model.classes = meta["classes"]
    return meta


def load_model(path: str | os.PathLike, **overrides) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a weights file describes and load it: (model, metadata)."""
    from .models import create_model
    state, meta = load_weights(path)
    if "model" not in meta:
        raise MobileNetsError(f"{path}: has no 'model' in its metadata; pass the model name to "
                              "create_model(name, pretrained=path) instead")
    model = create_model(meta["model"], **{**meta.get("model_kwargs", {}), **overrides})
    load_state_into(model, state, str(path))
    if "preprocessing" in meta:
        model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **meta["preprocessing"]}
    model.classes = meta.get("classes")
    return model, meta
