"""MobileNet V1, V2, V3 and V4 built from the papers' tables."""
from .errors import MobileNetsError
from .models import MobileNet, create_model, list_models, register_model
from .profile import profile
from . import heads  # noqa: F401  (registers the detection and segmentation models)

__all__ = ["MobileNet", "MobileNetsError", "create_model", "list_models", "profile",
           "register_model"]
__version__ = "0.1.0"


def __getattr__(name):
    # Predictor pulls in torchvision and ONNX Runtime; import it only when asked for.
    if name == "Predictor":
        from .predict import Predictor
        return Predictor
    raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
