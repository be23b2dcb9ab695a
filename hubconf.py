"""torch.hub entry points: `torch.hub.load(repo_dir, "mobilenet_v3_large", source="local",
pretrained=True)`; every registered classifier is one, taking `create_model`'s options."""
from mobilenets.models import create_model as _create_model
from mobilenets.models import list_models as _list_models

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]


def _entry(name):
    def build(pretrained=False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)
    build.__name__ = name
    build.__doc__ = f"mobilenets' {name}; pretrained=True loads its default published weights."
    return build


globals().update({_name: _entry(_name) for _name in _list_models(task="classification")})
