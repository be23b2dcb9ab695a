"""Converters from torchvision, timm and Keras ImageNet weights into mobilenets models.

Each source is described by data: rules that rename its layers to ours, the model options its
weights need (TF "same" padding, TF batch-norm epsilon, ReLU6 in V1), and the preprocessing it
was trained with. One engine applies them:

1. The source file is read as layers: a torch state dict grouped by module (torchvision, timm;
   .pth through `torch.load(weights_only=True)`, or .safetensors), or the per-layer weight lists
   of a Keras `.h5` / `.weights.h5` file (h5py, no TensorFlow).
2. A rule is a regex over a source layer name and a template of one of our layers, named as
   our state dict names them: `blocks.3.expand.conv`, `blocks.3.expand.bn`, `blocks.3.se.fc1`,
   `head.0`, `classifier`. Named groups in a rule:
     block  the source's own block id; blocks are numbered by its rank among the ids the file
            holds (numbers sort naturally, a missing id, e.g. Keras' `expanded_conv`, first);
     pos    a position inside the block (torchvision's `conv.2`), read as the pos-th of the
            mapping's roles that our block has (a block without expansion has no `expand`);
     part   "0"/"1" for a torchvision Conv2dNormActivation's conv/BN;
   any other group is copied into the template. `sibling` restricts a rule to blocks that also
   hold the named layer (timm's `conv_pw` is the expansion when `conv_pwl` exists, else the
   projection).
3. Tensors are brought to our layout (Keras HWIO kernels, 1×1 convs feeding a Linear). Two
   options are read off the tensors rather than the name: the classifier's class count (a
   fine-tuned head), and a stem kept at the table's width under a small multiplier
   (fixed_stem: timm's V3 below α 0.75, Keras' V3 always). The result is loaded strictly, so any layer left over or missing is
   named in the error.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import MobileNetsError
from .layers import LayerScale
from .mobilenet import IMAGENET_MEAN, IMAGENET_STD, create_model, model_defaults
from .specs import build_arch
from .tables import V4_TABLES
from ..core.io import check_writable
from .weights import imagenet_classes, load_state_into, load_weights, save_weights

SOURCES = ("torchvision", "timm", "keras")


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str
    sibling: str | None = None  # template of a source layer that must exist beside this one


@dataclass(frozen=True)
class Mapping:
    rules: tuple[Rule, ...]
    roles: tuple[str, ...] = ()  # what `pos` counts, in the source's order inside a block


PARTS = {"0": "conv", "1": "bn"}

# --- torchvision: features = [stem, *blocks, last conv]; V3's classifier = [Linear, act, drop, Linear]
_TV_COMMON = (
    Rule(r"features\.0\.(?P<part>[01])", "stem.{part}"),
    Rule(r"features\.(?P<block>\d+)\.(?:conv|block)\.(?P<pos>\d+)\.(?P<part>[01])",
         "blocks.{block}.{pos}.{part}"),
    Rule(r"features\.(?P<block>\d+)\.(?:conv|block)\.(?P<pos>\d+)\.(?P<fc>fc[12])",
         "blocks.{block}.{pos}.{fc}"),
    Rule(r"features\.(?P<block>\d+)\.conv\.(?P<pos>\d+)", "blocks.{block}.{pos}"),
    Rule(r"features\.\d+\.(?P<part>[01])", "last_conv.{part}"),
)
TORCHVISION = {
    "mobilenet_v2": Mapping(_TV_COMMON + (Rule(r"classifier\.1", "classifier"),),
                            roles=("expand", "depthwise", "project.conv", "project.bn")),
    "mobilenet_v3": Mapping(_TV_COMMON + (Rule(r"classifier\.0", "head.0"),
                                          Rule(r"classifier\.3", "classifier")),
                            roles=("expand", "depthwise", "se", "project")),
}

# --- timm (EfficientNet builder): blocks.<stage>.<index>; IR blocks have conv_pw/conv_dw/conv_pwl,
# depthwise-separable ones conv_dw/conv_pw, V3's last stage is a plain conv block.
_B = r"blocks\.(?P<block>\d+\.\d+)"
_TIMM_COMMON = (
    Rule(r"conv_stem", "stem.conv"),
    Rule(r"bn1", "stem.bn"),
    Rule(_B + r"\.conv_pw", "blocks.{block}.expand.conv", sibling="blocks.{block}.conv_pwl"),
    Rule(_B + r"\.bn1", "blocks.{block}.expand.bn", sibling="blocks.{block}.conv_pwl"),
    Rule(_B + r"\.bn2", "blocks.{block}.depthwise.bn", sibling="blocks.{block}.conv_pwl"),
    Rule(_B + r"\.conv_pwl", "blocks.{block}.project.conv"),
    Rule(_B + r"\.bn3", "blocks.{block}.project.bn"),
    Rule(_B + r"\.conv_dw", "blocks.{block}.depthwise.conv"),
    Rule(_B + r"\.bn1", "blocks.{block}.depthwise.bn", sibling="blocks.{block}.conv_dw"),
    Rule(_B + r"\.conv_pw", "blocks.{block}.project.conv"),
    Rule(_B + r"\.bn2", "blocks.{block}.project.bn"),
    Rule(_B + r"\.se\.conv_reduce", "blocks.{block}.se.fc1"),
    Rule(_B + r"\.se\.conv_expand", "blocks.{block}.se.fc2"),
    Rule(r"blocks\.\d+\.\d+\.conv", "last_conv.conv"),
    Rule(r"blocks\.(?P<cn>\d+\.\d+)\.bn1", "last_conv.bn", sibling="blocks.{cn}.conv"),
    Rule(r"classifier", "classifier"),
)
# timm's V4 (MobileNetV3 class, same builder): plain conv rows `conv`/`bn1`, fused IB
# (EdgeResidual) `conv_exp`/`bn1`/`conv_pwl`/`bn2`, UIB `dw_start`/`pw_exp`/`dw_mid`/`pw_proj`
# (each .conv/.bn) and `layer_scale`, Mobile MQA `norm` and `attn.{query,key,value,output}`; the
# 960-wide 1×1 conv alone in stage 4; the head layer `conv_head` with BN `norm_head`.
_TIMM_V4 = Mapping((
    Rule(r"conv_stem", "stem.conv"),
    Rule(r"bn1", "stem.bn"),
    Rule(r"blocks\.4\.0\.conv", "last_conv.conv"),
    Rule(r"blocks\.4\.0\.bn1", "last_conv.bn"),
    Rule(_B + r"\.conv", "blocks.{block}.conv"),
    Rule(_B + r"\.bn1", "blocks.{block}.bn", sibling="blocks.{block}.conv"),
    Rule(_B + r"\.conv_exp", "blocks.{block}.expand.conv"),
    Rule(_B + r"\.bn1", "blocks.{block}.expand.bn", sibling="blocks.{block}.conv_exp"),
    Rule(_B + r"\.conv_pwl", "blocks.{block}.project.conv"),
    Rule(_B + r"\.bn2", "blocks.{block}.project.bn", sibling="blocks.{block}.conv_exp"),
    Rule(_B + r"\.dw_start\.(?P<layer>conv|bn)", "blocks.{block}.start.{layer}"),
    Rule(_B + r"\.pw_exp\.(?P<layer>conv|bn)", "blocks.{block}.expand.{layer}"),
    Rule(_B + r"\.dw_mid\.(?P<layer>conv|bn)", "blocks.{block}.depthwise.{layer}"),
    Rule(_B + r"\.pw_proj\.(?P<layer>conv|bn)", "blocks.{block}.project.{layer}"),
    Rule(_B + r"\.layer_scale", "blocks.{block}.layer_scale"),
    Rule(_B + r"\.norm", "blocks.{block}.norm"),
    Rule(_B + r"\.attn\.(?P<kv>key|value)\.down_conv", "blocks.{block}.{kv}_down.conv"),
    Rule(_B + r"\.attn\.(?P<kv>key|value)\.norm", "blocks.{block}.{kv}_down.bn"),
    Rule(_B + r"\.attn\.(?P<proj>query|key|value|output)\.proj", "blocks.{block}.{proj}"),
    Rule(r"conv_head", "head.0"),
    Rule(r"norm_head", "head.1"),
    Rule(r"classifier", "classifier"),
))
TIMM = {
    "mobilenet_v1": Mapping(_TIMM_COMMON),
    "mobilenet_v2": Mapping(_TIMM_COMMON + (Rule(r"conv_head", "last_conv.conv"),
                                            Rule(r"bn2", "last_conv.bn"))),
    "mobilenet_v3": Mapping(_TIMM_COMMON + (Rule(r"conv_head", "head.0"),)),
    **{family: _TIMM_V4 for family in V4_TABLES},
}

# --- Keras applications. Names are normalised (lower case, "/" → "_", "BatchNorm" → "bn") so that
# the Keras 2 files on storage.googleapis.com ("expanded_conv/depthwise/BatchNorm") and Keras 3
# models ("expanded_conv_depthwise_bn") read alike.
_KV3_BLOCK = r"expanded_conv(?:_(?P<block>\d+))?"
KERAS = {
    "mobilenet_v1": Mapping((
        Rule(r"conv1", "stem.conv"),
        Rule(r"conv1_bn", "stem.bn"),
        Rule(r"conv_dw_(?P<block>\d+)", "blocks.{block}.depthwise.conv"),
        Rule(r"conv_dw_(?P<block>\d+)_bn", "blocks.{block}.depthwise.bn"),
        Rule(r"conv_pw_(?P<block>\d+)", "blocks.{block}.project.conv"),
        Rule(r"conv_pw_(?P<block>\d+)_bn", "blocks.{block}.project.bn"),
        Rule(r"conv_preds", "classifier"),
    )),
    "mobilenet_v2": Mapping((
        Rule(r"conv1", "stem.conv"),
        Rule(r"bn_conv1", "stem.bn"),
        Rule(r"(?:expanded_conv|block_(?P<block>\d+))_(?P<role>expand|depthwise|project)",
             "blocks.{block}.{role}.conv"),
        Rule(r"(?:expanded_conv|block_(?P<block>\d+))_(?P<role>expand|depthwise|project)_bn",
             "blocks.{block}.{role}.bn"),
        Rule(r"conv_1", "last_conv.conv"),
        Rule(r"conv_1_bn", "last_conv.bn"),
        Rule(r"predictions", "classifier"),
        Rule(r"logits", "classifier"),  # keras_applications' name, in the published .h5 files
    )),
    "mobilenet_v3": Mapping((
        Rule(r"conv", "stem.conv"),
        Rule(r"conv_bn", "stem.bn"),
        Rule(_KV3_BLOCK + r"_(?P<role>expand|depthwise|project)", "blocks.{block}.{role}.conv"),
        Rule(_KV3_BLOCK + r"_(?P<role>expand|depthwise|project)_bn", "blocks.{block}.{role}.bn"),
        Rule(_KV3_BLOCK + r"_squeeze_excite_conv", "blocks.{block}.se.fc1"),
        Rule(_KV3_BLOCK + r"_squeeze_excite_conv_1", "blocks.{block}.se.fc2"),
        Rule(r"conv_1", "last_conv.conv"),
        Rule(r"conv_1_bn", "last_conv.bn"),
        Rule(r"conv_2", "head.0"),
        Rule(r"logits", "classifier"),
    )),
}
MAPPINGS = {"torchvision": TORCHVISION, "timm": TIMM, "keras": KERAS}

# Model options each source's weights were trained with (beyond the architecture's name).
_TF = {"padding": "same", "bn_eps": 1e-3}
# Batch-norm epsilon is stated for every source: it is in no state dict, and our families'
# defaults follow the papers, not necessarily the source.
MODEL_OPTIONS = {
    # torchvision's V3 keeps TF's BN epsilon, with PyTorch padding; its V2 PyTorch's
    "torchvision": {"mobilenet_v2": {"bn_eps": 1e-5},
                    "mobilenet_v3_large": {"bn_eps": 1e-3}, "mobilenet_v3_small": {"bn_eps": 1e-3}},
    "timm": {"*": {"bn_eps": 1e-5}, "mobilenet_v1": {"act": "relu6"}},
    "timm-tf": {"*": _TF},
    "keras": {"*": _TF, "mobilenet_v1": {"act": "relu6"}},
}
_HALF = (0.5, 0.5, 0.5)  # mean/std 0.5 is TF's [-1, 1] input scaling
PREPROCESSING = {
    "torchvision": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"),
    "timm": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"),
    "timm-tf": dict(mean=_HALF, std=_HALF, interpolation="bicubic"),
    "keras": dict(mean=_HALF, std=_HALF, interpolation="bilinear"),
}
CROP_PCT = 0.875
# Keras layer weights in the order Keras stores them, named as torch names ours.
KERAS_PARAMS = {nn.BatchNorm2d: ("weight", "bias", "running_mean", "running_var"),
                nn.Conv2d: ("weight", "bias"), nn.Linear: ("weight", "bias")}


# ---------------------------------------------------------------------------------------------
# Our side

def canonical_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{our layer name: module} for every layer that holds weights; a layer's name is the
    prefix of its state-dict keys (`blocks.3.expand.conv`, for any padding style)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, LayerScale))}


def _mapping(source: str, family: str) -> Mapping:
    table = MAPPINGS[source]
    mapping = table.get(family) or table.get(family.rsplit("_", 1)[0])  # V3 large/small alike
    if mapping is None:
        raise MobileNetsError(f"{source} has no {family}; it has {', '.join(sorted(table))}")
    return mapping


# ---------------------------------------------------------------------------------------------
# Source side: files read as {layer name: {param: tensor}} (torch) or {layer name: [arrays]} (Keras)

def read_torch_layers(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    state, _ = load_weights(path)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel / DDP
        layer, _, param = key.rpartition(".")
        layers.setdefault(layer, {})[param] = tensor
    return layers


def normalise_keras_name(name: str) -> str:
    return name.lower().replace("/", "_").replace("batchnorm", "bn")


def read_keras_layers(path: Path) -> dict[str, list[torch.Tensor]]:
    """Per-layer weight lists of a Keras weights file, without TensorFlow.

    Two layouts exist: the legacy HDF5 one (Keras 2 application files, and `model.save("x.h5")`),
    where the root or `model_weights` lists `layer_names` and each layer its `weight_names`; and
    Keras 3's `.weights.h5`, where `layers/<object>/vars/<i>` holds the i-th weight and the
    group's `name` attribute the layer name.
    """
    try:
        import h5py
    except ImportError:
        raise MobileNetsError(f"{path}: reading Keras weights needs h5py (pip install h5py)") from None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise MobileNetsError(f"{path}: not a readable HDF5 file, truncated or corrupt "
                              f"({str(e).splitlines()[0][:120]})") from None
    out: dict[str, list[torch.Tensor]] = {}
    try:
        with f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in root.attrs:
                for layer in root.attrs["layer_names"]:
                    layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                    names = [n.decode() if isinstance(n, bytes) else str(n)
                             for n in root[layer].attrs.get("weight_names", [])]
                    if names:
                        out[normalise_keras_name(layer)] = [torch.from_numpy(root[layer][n][()]) for n in names]
            elif "layers" in root:
                def visit(_, obj):
                    if isinstance(obj, h5py.Group) and obj.name.endswith("/vars") and len(obj):
                        name = obj.attrs.get("name", obj.parent.name.rsplit("/", 1)[-1])
                        out[normalise_keras_name(str(name))] = [
                            torch.from_numpy(obj[str(i)][()]) for i in range(len(obj))]
                root["layers"].visititems(visit)
    except (KeyError, OSError, ValueError) as e:
        raise MobileNetsError(f"{path}: unreadable Keras weights ({str(e).splitlines()[0][:120]})") from None
    if not out:
        raise MobileNetsError(f"{path}: holds no Keras layer weights (no 'layer_names' nor 'layers' group)")
    return out


# ---------------------------------------------------------------------------------------------
# The engine

def _natural(block_id: str | None) -> tuple:
    return (-1,) if block_id is None else tuple(int(x) for x in block_id.split("."))


def rename_layers(names, mapping: Mapping, ours: dict, origin: str) -> tuple[dict[str, str], list[str]]:
    """({source layer: our layer}, [source layers no rule claims])."""
    present = set(names)
    matches, unclaimed = [], []
    for name in names:
        for rule in mapping.rules:
            m = re.fullmatch(rule.pattern, name)
            if m and (rule.sibling is None or rule.sibling.format(**m.groupdict()) in present):
                matches.append((name, m.groupdict(), rule))
                break
        else:
            unclaimed.append(name)
    ids = sorted({g["block"] for _, g, _ in matches if "block" in g}, key=_natural)
    rank = {block_id: i for i, block_id in enumerate(ids)}
    renamed: dict[str, str] = {}
    for source, groups, rule in matches:
        g = dict(groups)
        if "block" in g:
            g["block"] = rank[g["block"]]
        if g.get("part") is not None:
            g["part"] = PARTS[g["part"]]
        if "pos" in g:
            roles = [r for r in mapping.roles
                     if any(k == f"blocks.{g['block']}.{r}" or k.startswith(f"blocks.{g['block']}.{r}.")
                            for k in ours)]
            pos = int(g["pos"])
            g["pos"] = roles[pos] if pos < len(roles) else f"{groups['pos']}?"
        renamed[source] = rule.target.format(**g)
    targets = list(renamed.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise MobileNetsError(f"{origin}: several layers map to {', '.join(twice[:3])}; the file "
                              "is of another architecture")
    return renamed, unclaimed


def _fit(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv kernel for a Linear (and back) differ only by trailing unit dims."""
    if tensor.shape != like.shape and tensor.numel() == like.numel() and \
            [d for d in tensor.shape if d != 1] == [d for d in like.shape if d != 1]:
        return tensor.reshape(like.shape)
    return tensor


def _from_keras(arrays: list[torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    names = next((v for k, v in KERAS_PARAMS.items() if isinstance(module, k)), ("weight", "bias"))
    out = dict(zip(names, arrays))
    w = out.get("weight")
    if w is not None and w.dim() == 4:  # HWIO; a depthwise kernel is H, W, C, multiplier
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
        out["weight"] = w.permute(2, 3, 0, 1) if depthwise else w.permute(3, 2, 0, 1)
    elif w is not None and w.dim() == 2:  # Dense: in, out
        out["weight"] = w.t()
    return out


def convert_layers(source: str, layers: dict, model: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Our state dict from a source's layers; a layer no rule claims is kept under its own name
    so that loading names it as unexpected."""
    mapping = _mapping(source, model.arch.family)
    ours = canonical_layers(model)
    renamed, unclaimed = rename_layers(list(layers), mapping, ours, origin)
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for src, target in renamed.items():
        if target not in ours:
            unclaimed.append(src)
            continue
        module = ours[target]
        params = _from_keras(layers[src], module) if source == "keras" else layers[src]
        for param, tensor in params.items():
            key = f"{target}.{param}"
            state[key] = _fit(tensor, own[key]) if key in own else tensor
    for src in unclaimed:
        params = layers[src] if isinstance(layers[src], dict) else dict(enumerate(layers[src]))
        for param, tensor in params.items():
            state[f"{src}.{param}"] = tensor
    for key, value in own.items():
        # Keras keeps no BN update counter; ours only matters for momentum=None training.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def convert(source: str, path: str | os.PathLike, model_name: str, tf: bool | None = None,
            **model_kwargs) -> nn.Module:
    """Build `model_name` with the options the source's weights need and load them exactly.

    source: "torchvision", "timm" or "keras". tf: the timm file holds TensorFlow-ported weights
    (timm's tf_* models); by default guessed from "tf_mobilenet" in the file's path, as in the
    hub cache's models--timm--tf_mobilenetv3_large_100.in1k/.../model.safetensors.
    """
    if source not in SOURCES:
        raise MobileNetsError(f"unknown source {source!r}; allowed: {', '.join(SOURCES)}")
    path = Path(path)
    if not path.is_file():
        raise MobileNetsError(f"{path}: no such file")
    family = model_defaults(model_name).get("family")
    if family is None:
        raise MobileNetsError(f"{model_name} is not a MobileNet classifier; convert into one of "
                              "mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, "
                              "mobilenet_v4_*")
    _mapping(source, family)
    layers = read_keras_layers(path) if source == "keras" else read_torch_layers(path)
    options = dict(options_for(_variant(source, path, tf), family))
    options.update(model_kwargs)
    model = create_model(model_name, **options)
    state = convert_layers(source, layers, model, str(path))
    found = _options_in_tensors(state, model)
    if found:
        model = create_model(model_name, **{**options, **found})
        state = convert_layers(source, layers, model, str(path))
    load_state_into(model, state, f"{path} ({source})")
    return model.eval()


def _options_in_tensors(state: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Options that the source's tensors show and its name does not: a fine-tuned classifier's
    class count, and a stem kept at the table's width under a small multiplier."""
    found = {}
    rows = state.get("classifier.weight")
    if rows is not None and rows.dim() >= 1 and rows.shape[0] != _num_classes(model):
        found["num_classes"] = int(rows.shape[0])
    stem = state.get("stem.conv.weight")
    table = build_arch(model.arch.family, fixed_stem=True).stem_ch
    if stem is not None and stem.dim() == 4 and stem.shape[0] == table != model.arch.stem_ch:
        found["fixed_stem"] = True
    return found


def _num_classes(model: nn.Module) -> int:
    return getattr(model.classifier, "out_features", 0)


def _variant(source: str, path: Path, tf: bool | None) -> str:
    if source != "timm":
        return source
    if tf is None:
        tf = "tf_mobilenet" in str(path.resolve())
    return "timm-tf" if tf else "timm"


def options_for(variant: str, family: str) -> dict:
    table = MODEL_OPTIONS[variant]
    return {**table.get("*", {}), **table.get(family, {})}


def convert_file(source: str, path: str | os.PathLike, out: str | os.PathLike, model_name: str,
                 tf: bool | None = None, resolution: int | None = None, **model_kwargs) -> dict:
    """Convert and write `out` (safetensors with metadata); returns the metadata written."""
    path = Path(path)
    check_writable(out)
    model = convert(source, path, model_name, tf=tf, **model_kwargs)
    # The model's own input size unless told: V4's reference weights are 224, 256 or 384 px.
    resolution = resolution or model.pretrained_cfg.get("resolution", 224)
    variant = _variant(source, path, tf)
    num_classes = _num_classes(model)
    meta = {
        "preprocessing": dict(resolution=resolution, resize=int(round(resolution / CROP_PCT)),
                              in_chans=3, **PREPROCESSING[variant]),
        "source": {"framework": variant, "file": path.name, "sha256": _sha256(path)},
    }
    if num_classes == 1000:
        meta["classes"] = imagenet_classes()
    save_weights(out, model, meta)
    return {"format": "mobilenets/1", "model": model.model_name, "model_kwargs": model.model_kwargs,
            **meta}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
