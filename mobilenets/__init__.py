"""MobileNet V1, V2 and V3 built from the papers' tables."""
from .errors import MobileNetsError
from .models import MobileNet, create_model, list_models, register_model
from .profile import profile
from . import heads  # noqa: F401  (registers the detection and segmentation models)

__all__ = ["MobileNet", "MobileNetsError", "create_model", "list_models", "profile",
           "register_model"]
__version__ = "0.1.0"
