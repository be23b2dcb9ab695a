"""MobileNet V1, V2, V3 and V4 built from the papers' tables.

Subpackages follow the pipeline: `models` (specs, layers, the builder and registry, weights,
profiler, task heads) → `datasets` → `train` → `deploy` → `analysis`, with `cli` on top. Each
imports only from the ones before it.
"""
import importlib

from .core.errors import MobileNetsError
from .core.runtime import tune_allocator

__all__ = ["MobileNet", "MobileNetsError", "Predictor", "create_model", "fuse", "list_models",
           "load_model", "profile", "register_model", "tune_allocator"]
__version__ = "0.1.0"

# Where the names that import torch live: (module, attribute). They load when first asked for, so
# importing the package is instant and `python -m mobilenets` answers a Ctrl-C while torch loads
# with one line.
_LAZY = {"MobileNet": ("models", "MobileNet"), "create_model": ("models", "create_model"),
         "list_models": ("models", "list_models"), "load_model": ("models", "load_model"),
         "profile": ("models", "profile"), "register_model": ("models", "register_model"),
         "Predictor": ("deploy.predict", "Predictor"), "fuse": ("deploy.fuse", "prepare_for_inference")}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
