"""MobileNet V1, V2 and V3 built from the papers' tables.

Subpackages follow the pipeline: `models` (specs, layers, the builder and registry, weights,
profiler, task heads) → `datasets` → `train` → `deploy` → `analysis`, with `cli` on top. Each
imports only from the ones before it.
"""
from .core.errors import MobileNetsError
from .core.runtime import tune_allocator
from .deploy.fuse import prepare_for_inference as fuse
from .models import MobileNet, create_model, list_models, load_model, profile, register_model

__all__ = ["MobileNet", "MobileNetsError", "Predictor", "create_model", "fuse", "list_models",
           "load_model", "profile", "register_model", "tune_allocator"]
__version__ = "0.1.0"


def __getattr__(name):
    # Predictor pulls in the deployment runtimes; import it only when asked for.
    if name == "Predictor":
        from .deploy.predict import Predictor
        return Predictor
    raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
