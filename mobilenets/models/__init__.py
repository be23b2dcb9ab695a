"""The networks: the papers' tables (`specs`), the blocks (`layers`), one model class built from
a spec with its registry and loaders (`mobilenet`), the weights format (`weights`), conversion
from other libraries (`convert`), the analytic profiler (`profile`) and the task heads
(`heads`, `detection`)."""
from . import heads  # noqa: F401  (registers the detection and segmentation models)
from . import pretrained  # noqa: F401  (lets create_model load published weights by tag)
from .mobilenet import MobileNet, create_model, list_models, load_model, model_task, register_model
from .profile import profile

__all__ = ["MobileNet", "create_model", "list_models", "load_model", "model_task", "profile",
           "register_model"]
