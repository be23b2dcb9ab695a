"""One model class for every MobileNet, built from a resolved `Arch`; the model registry; and
the loaders that rebuild a model from a weights file."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from typing import Callable

import torch
from torch import nn

from ..core.errors import MobileNetsError
from .plan import apply_plan
from .features import FEATURE_LOCATIONS, feature_levels  # noqa: F401  (their home before)
from .network import MobileNet, build_block  # noqa: F401  (their home before)
from .specs import build_arch
from .tables import bn_defaults
from .timm_compat import TIMM_NAMES, model_cfg, with_input_size
from .weights import (check_metadata, is_url, load_state_into, load_weights, read_metadata,
                      state_mismatch, upgrade_state)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], **defaults) -> None:
    """Register `name` so that `create_model(name, **kw)` calls `builder(**defaults, **kw)`."""
    _REGISTRY[name] = (builder, defaults)


def list_models(pattern: str | None = None, pretrained: bool = False, task: str | None = None,
                exclude_filters: str | list[str] = ()) -> list[str]:
    """Registered names matching the shell-style `pattern`: every model (classifiers, detectors,
    segmenters) unless `task` names one ("classification", ...); with pretrained=True the
    published weights' "name.tag" instead (`registry_weights`). `exclude_filters` drops names
    matching any of its patterns, as in timm."""
    if pretrained:
        from .registry_weights import WEIGHTS  # data only; its accuracy sits with each tag
        names = sorted(w.name for w in WEIGHTS)
    else:
        names = sorted(_REGISTRY)
    if task is not None:
        names = [n for n in names if model_task(n.split(".")[0]) == task]
    excluded = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    return [n for n in names if (not pattern or fnmatch.fnmatch(n, pattern))
            and not any(fnmatch.fnmatch(n, x) for x in excluded)]


def model_defaults(name: str) -> dict:
    return dict(_get(name)[1])


def model_task(name: str) -> str:
    """What a registered model does: "classification", or the `task` its class declares
    ("detection", "segmentation")."""
    return getattr(_get(name)[0], "task", "classification")


def _get(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, [*_REGISTRY, *TIMM_NAMES], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `mobilenets models`"
        raise MobileNetsError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


# Set by `pretrained` (which builds on this module): loads the published weights of a registry tag.
PRETRAINED_LOADER: list[Callable[..., nn.Module]] = []


def create_model(name: str, pretrained: str | os.PathLike | bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model. `pretrained` is a weights file or an http(s) URL of one (see
    `mobilenets.models.weights`); the options it was saved with (e.g. TF padding) fill in any the name
    and `kwargs` leave open. pretrained=True, a tag ("name.tag", or pretrained="tag") or
    "hf-hub:repo" load published ImageNet weights (`mobilenets.models.pretrained`)."""
    if name in TIMM_NAMES:
        return _create_timm_named(name, pretrained, kwargs)
    if PRETRAINED_LOADER and (pretrained is True or "." in name or (
            isinstance(pretrained, str) and not os.path.exists(pretrained) and not is_url(pretrained)
            and (pretrained.startswith("hf-hub:") or os.sep not in pretrained and "." not in pretrained))):
        return PRETRAINED_LOADER[0](name, pretrained, kwargs)
    builder, defaults = _get(name)
    params = _check_options(name, kwargs)
    if not pretrained:
        return _build(name, kwargs)
    state, meta = load_weights(pretrained)
    saved = {k: v for k, v in _options_of(meta, defaults.get("family")).items()
             if k not in defaults and k in params}
    model = _build_for(name, {**saved, **kwargs}, state, meta, str(pretrained),
                       from_file=set(saved) - set(kwargs))
    _apply_weights(model, state, meta, str(pretrained))
    return model


def _create_timm_named(name: str, pretrained, kwargs: dict) -> nn.Module:
    """A timm model name: ours with timm's options; pretrained=True takes timm's own weights."""
    ours, options = TIMM_NAMES[name]
    if pretrained is True:
        from .registry_weights import WEIGHTS  # data only
        pretrained = next((f"hf-hub:{w.hf_hub_id}" for w in WEIGHTS
                           if w.hf_hub_id and w.hf_hub_id.startswith(f"timm/{name}.")), True)
    return create_model(ours, pretrained, **{**options, **kwargs})


def _check_options(name: str, kwargs: dict, source: str = "") -> set[str]:
    """The builder's parameters; one line if `kwargs` names others (a builder taking **kwargs
    takes anything)."""
    params = inspect.signature(_get(name)[0]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise MobileNetsError(f"{source}{name} does not take {', '.join(unknown)}; it takes "
                                  f"{', '.join(sorted(params))}")
    return set(params)


def _build(name: str, kwargs: dict) -> nn.Module:
    builder, defaults = _get(name)
    model = builder(**{**defaults, **kwargs})
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def _build_for(name: str, kwargs: dict, state: dict, meta: dict, source: str,
               from_file: set[str]) -> nn.Module:
    """Build `name` for a weights file, after checking on the meta device (no memory) that its
    options make exactly the file's tensor shapes and that its metadata fits that model: a
    forged num_classes or resolution is refused before it can size an allocation."""
    label = {k: f"metadata model_kwargs.{k}" if k in from_file else k for k in kwargs}
    try:
        with torch.device("meta"):
            probe = _build(name, kwargs)
    except MobileNetsError as e:
        raise MobileNetsError(f"{source}: {e}") from e
    except (TypeError, ValueError, KeyError, ArithmeticError) as e:  # option values of the wrong type
        options = ", ".join(f"{label[k]}={v!r}" for k, v in kwargs.items())
        raise MobileNetsError(f"{source}: cannot build {name} with {options} ({e})") from e
    own = probe.state_dict()
    state = upgrade_state(state, probe)   # files written in an earlier layout
    problems = state_mismatch(own, state)
    if problems:
        hints = [f"{label.get(key, key)}={state[tensor].shape[dim]} (its {tensor} is "
                 f"{tuple(state[tensor].shape)})"
                 for key, tensor, dim in (("num_classes", "classifier.weight", 0),
                                          ("in_chans", "stem.conv.weight", 1))
                 if tensor in state and tensor in own and state[tensor].ndim == own[tensor].ndim
                 and state[tensor].shape[dim] != own[tensor].shape[dim]]
        raise MobileNetsError(f"{source}: does not fit {name}; {problems}"
                              + (f"; allowed: {', '.join(hints)}" if hints else ""))
    check_metadata_for(probe, meta, source)
    return _build(name, kwargs)


def check_metadata_for(model: nn.Module, meta: dict, source: str) -> None:
    """`weights.check_metadata` against what `model` takes and gives: its total stride as the
    smallest resolution, its input channels, and its class count (task models count
    background; a feature extractor has none)."""
    classifier = getattr(model, "classifier", None)
    outputs = getattr(model, "num_classes", None)
    if outputs is None and isinstance(classifier, nn.Linear):
        outputs = classifier.out_features
    check_metadata(meta, source, min_resolution=getattr(getattr(model, "arch", None), "total_stride", 1),
                   in_chans=(getattr(model, "pretrained_cfg", None) or {}).get("in_chans"),
                   outputs=outputs)


def mobilenet(family: str, width_mult: float = 1.0, num_classes: int = 1000, in_chans: int = 3,
              dropout: float | None = None, small_input: bool = False, features_only: bool = False,
              out_indices: tuple[int, ...] | None = None, output_stride: int = 32,
              minimalistic: bool = False, proj_act: str | None = "default",
              shortcut: str = "bottleneck", expand_ratio: float | None = None,
              padding: str = "symmetric", bn_eps: float | None = None,
              bn_momentum: float | None = None, act: str | None = None,
              fixed_stem: bool = False, resolution: int = 224, feature_location: str = "bottleneck",
              keep_last_conv: bool = False, head_channels: int | None = None, reduced_tail: bool = False,
              full_conv: bool = False, shallow: bool = False, last_stage: str = "efficient",
              hswish_from: int | None = None, global_pool: str = "avg",
              drop_path_rate: float = 0.0, channel_plan: dict | None = None,
              blocks: list | None = None) -> MobileNet:
    """Build a MobileNet of `family` with the given options (see `specs.build_arch`; the
    features_only options in `MobileNet` and `feature_levels`).

    padding="same" and bn_eps=1e-3 reproduce TensorFlow-trained weights (Keras, timm `tf_`).
    bn_eps, bn_momentum: None takes the family's (`tables.BN_DEFAULTS`; eps 1e-3 with "same").
    resolution: the input size the model is meant for, recorded in `pretrained_cfg` (V4's
    reference weights are trained at 224, 256 or 384 px).
    global_pool: "avg", "max", "avgmax" or "" (see `network.MobileNet`); drop_path_rate:
    stochastic depth, rising linearly over the blocks with a shortcut.
    channel_plan: an explicit width for every layer (`plan.check_plan`), applied after all the
    other options.
    """
    for key, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise MobileNetsError(f"{key}={value!r} is out of range; allowed: integer >= {low}")
    if padding not in ("symmetric", "same"):
        raise MobileNetsError(f"padding={padding!r} is not one of 'symmetric', 'same'")
    if bn_eps is not None and not (isinstance(bn_eps, (int, float)) and 0 < bn_eps < 1):
        raise MobileNetsError(f"bn_eps={bn_eps!r} is out of range; allowed: 0 < bn_eps < 1")
    if bn_momentum is not None and not (isinstance(bn_momentum, (int, float)) and 0 < bn_momentum <= 1):
        raise MobileNetsError(f"bn_momentum={bn_momentum!r} is out of range; allowed: 0 < bn_momentum <= 1")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise MobileNetsError(f"resolution={resolution!r} is out of range; allowed: integer >= 1")
    if output_stride != 32 and small_input:
        raise MobileNetsError("small_input and output_stride < 32 conflict: pick one way to keep resolution")
    arch = build_arch(family, width_mult, dropout=dropout, small_input=small_input,
                      output_stride=output_stride, minimalistic=minimalistic, proj_act=proj_act,
                      shortcut=shortcut, expand_ratio=expand_ratio, act=act,
                      fixed_stem=fixed_stem, head_channels=head_channels, reduced_tail=reduced_tail,
                      full_conv=full_conv, shallow=shallow, last_stage=last_stage, hswish_from=hswish_from,
                      blocks=blocks)
    if channel_plan is not None:
        arch = apply_plan(arch, channel_plan)
    bn = bn_defaults(family)   # both checked > 0 above, so `or` only replaces None
    bn_eps, bn_momentum = bn_eps or (1e-3 if padding == "same" else bn.eps), bn_momentum or bn.momentum
    model = MobileNet(arch, num_classes, in_chans, features_only, out_indices, padding, bn_eps,
                      bn_momentum, feature_location, keep_last_conv, global_pool, drop_path_rate)
    model.pretrained_cfg = model_cfg(model, resolution, in_chans, num_classes, IMAGENET_MEAN, IMAGENET_STD)
    return model


def check_resolution(model: nn.Module, resolution) -> int:
    """The smallest input is the network's total stride; anything below collapses to nothing."""
    stride = getattr(getattr(model, "arch", None), "total_stride", 1)
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < stride:
        raise MobileNetsError(
            f"resolution={resolution!r} is too small for a network of total stride {stride}; "
            f"allowed: integer >= {stride}")
    return resolution


def _width_suffix(w: float) -> str:
    return f"{int(round(w * 100)):03d}"


FAMILY_WIDTHS = {
    "mobilenet_v1": (0.25, 0.5, 0.75, 1.0),
    "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    # V3: the widths of the paper's Table 9
    "mobilenet_v3_large": (0.35, 0.5, 0.75, 1.0, 1.25),
    "mobilenet_v3_small": (0.35, 0.5, 0.75, 1.0, 1.25),
    # V4: the widths timm registers
    "mobilenet_v4_conv_small": (0.35, 0.5, 1.0),
    "mobilenet_v4_conv_medium": (1.0,),
    "mobilenet_v4_conv_large": (1.0,),
    "mobilenet_v4_hybrid_medium": (0.75, 1.0),
    "mobilenet_v4_hybrid_large": (0.75, 1.0),
}
# Input sizes of the reference weights (timm's default pretrained configurations); 224 elsewhere.
NATIVE_RESOLUTIONS = {
    "mobilenet_v4_conv_medium": 256,
    "mobilenet_v4_conv_large": 384,
    "mobilenet_v4_hybrid_medium": 256,
    "mobilenet_v4_hybrid_large": 384,
    "mobilenet_v4_hybrid_large_075": 256,
}


def _native(name: str) -> dict:
    return {"resolution": NATIVE_RESOLUTIONS[name]} if name in NATIVE_RESOLUTIONS else {}


for _family, _widths in FAMILY_WIDTHS.items():
    register_model(_family, mobilenet, family=_family, **_native(_family))
    for _w in _widths:
        _name = f"{_family}_{_width_suffix(_w)}"
        register_model(_name, mobilenet, family=_family, width_mult=_w,
                       **_native(_name if _w != 1 else _family))
    if _family.startswith("mobilenet_v3"):
        for _w in _widths:
            register_model(f"{_family}_minimal_{_width_suffix(_w)}", mobilenet, family=_family,
                           width_mult=_w, minimalistic=True)
        register_model(f"{_family}_minimal", mobilenet, family=_family, minimalistic=True)
# V1 Table 4's Conv MobileNet and Table 5's shallow MobileNet.
register_model("mobilenet_v1_full_conv", mobilenet, family="mobilenet_v1", full_conv=True)
register_model("mobilenet_v1_shallow", mobilenet, family="mobilenet_v1", shallow=True)



def saved_options(path: str | os.PathLike, family: str | None) -> dict:
    """The model options a weights file was saved with, if it holds a model of `family`.

    Options such as padding="same", bn_eps or act change no tensor shape, so a file converted
    from TensorFlow would load into a default-built model and silently compute something else;
    create_model(name, pretrained=...) therefore builds with them.
    """
    return _options_of(read_metadata(path), family)


def _options_of(meta: dict, family: str | None) -> dict:
    saved, kwargs = meta.get("model"), meta.get("model_kwargs", {})
    try:
        defaults = model_defaults(saved)
    except (TypeError, MobileNetsError):
        return {}  # not our format (or an unknown model): loading reports what is wrong
    if family is None or defaults.pop("family", None) != family or not isinstance(kwargs, dict):
        return {}
    return {**defaults, **kwargs}


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Load a weights file (or URL) into `model`; its classes and preprocessing, checked against
    the model, become `model.classes` and `model.pretrained_cfg`. Returns the metadata."""
    state, meta = load_weights(path)
    check_metadata_for(model, meta, str(path))
    _apply_weights(model, state, meta, str(path))
    return meta


def _apply_weights(model: nn.Module, state: dict, meta: dict, source: str) -> None:
    load_state_into(model, state, source)
    if "preprocessing" in meta:
        model.pretrained_cfg = with_input_size({**getattr(model, "pretrained_cfg", {}),
                                                **meta["preprocessing"]})
    if "classes" in meta:
        model.classes = meta["classes"]


def load_model(path: str | os.PathLike, **overrides) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a weights file describes and load it: (model, metadata). The metadata's
    model options are checked against the file's tensors, and its classes and preprocessing
    against that model, before the model is built."""
    state, meta = load_weights(path)
    if "model" not in meta:
        raise MobileNetsError(f"{path}: has no 'model' in its metadata; pass the model name to "
                              "create_model(name, pretrained=path) instead")
    name, kwargs = meta["model"], meta.get("model_kwargs", {})
    if not isinstance(name, str):
        raise MobileNetsError(f"{path}: metadata model={name!r} is refused; allowed: a registered "
                              "model name (see `mobilenets models`)")
    if not isinstance(kwargs, dict) or "pretrained" in kwargs:
        # a weights file that named other weights would have loading fetch any path or URL
        what = "names pretrained" if isinstance(kwargs, dict) else f"is {type(kwargs).__name__}"
        raise MobileNetsError(f"{path}: metadata model_kwargs {what}; allowed: a JSON object of "
                              f"{name}'s options other than pretrained")
    try:
        _get(name)
    except MobileNetsError as e:
        raise MobileNetsError(f"{path}: metadata model: {e}") from e
    kwargs = {**kwargs, **overrides}
    _check_options(name, kwargs, f"{path}: metadata model_kwargs: ")
    model = _build_for(name, kwargs, state, meta, str(path), from_file=set(kwargs) - set(overrides))
    _apply_weights(model, state, meta, str(path))
    model.classes = meta.get("classes")
    return model, meta


def load_task_model(path) -> tuple[torch.nn.Module, dict]:
    model, meta = load_model(path)
    if meta.get("task") not in ("detection", "segmentation"):
        raise MobileNetsError(f"{path}: not a detection or segmentation weights file "
                              "(no 'task' in its metadata)")
    return model.eval(), meta


