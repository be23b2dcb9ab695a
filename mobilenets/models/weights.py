"""mobilenets' weight format: safetensors with the metadata needed to rebuild and feed the model.

The safetensors header's `__metadata__` (string to string) holds JSON values under these keys:
  format     "mobilenets/1"
  model      registered model name, e.g. "mobilenet_v2"
  model_kwargs  create_model keyword arguments, e.g. {"num_classes": 10, "in_chans": 1}
  classes    list of class names (index order)
  preprocessing  {"resolution", "resize", "mean", "std", "in_chans", "interpolation"}
Any further keys (e.g. "source", "top1") are kept as given.

Training checkpoints (.pth/.pt) are read too, but only through `torch.load(weights_only=True)`:
tensors and plain containers, never arbitrary pickled objects. Weights named by an http(s) URL
are downloaded once into a cache directory, the way torch.hub does, under a name that carries a
hash of the whole URL.

Metadata is input like any other: `check_metadata` holds classes and preprocessing to what the
model's tensors and sane sizes allow before anything is sized by them.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import pickle
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..core.checksum import check_flat, seal_file, with_placeholder
from ..core.errors import MobileNetsError
from ..core.io import atomic_path

FORMAT = "mobilenets/1"
# Where a training checkpoint keeps its state dict, if not at the top level.
CHECKPOINT_STATE_KEYS = ("state_dict", "model", "model_state", "state_dict_ema")
# Seconds a download may wait for the server (to connect, or for its next bytes).
DOWNLOAD_TIMEOUT_S = 60
# Hex digits of the URL's SHA-256 in a cached file's name: enough that two URLs never meet.
URL_HASH_CHARS = 12
# The largest input side metadata may ask for: 4096² RGB is 200 MB as float32, well past any
# MobileNet's use, and far below what a forged value (10**7: 10**14 bytes) would allocate.
MAX_RESOLUTION = 4096
# Channels an exported file's preprocessing may name when no model tensor says how many.
MAX_IN_CHANS = 16
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PREPROCESSING_KEYS = ("resolution", "resize", "mean", "std", "in_chans", "interpolation")


def save_weights(path: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None) -> None:
    """Write the model's state dict and metadata atomically."""
    meta = {"format": FORMAT, "model": getattr(model, "model_name", type(model).__name__),
            "model_kwargs": getattr(model, "model_kwargs", {})}
    meta.update(metadata or {})
    write_weights(path, model.state_dict(), meta)


def write_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write a state dict and metadata (JSON values) atomically, e.g. as `load_weights` read them,
    with the file's checksum (core/checksum.py; any checksum in `metadata` is replaced)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp),
                  metadata={k: json.dumps(v) for k, v in with_placeholder(metadata).items()})
        seal_file(tmp)


def load_weights(ref: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a safetensors file or a torch checkpoint, or of the cached
    download of an http(s) URL; one-line error if the file is neither, is cut short, or is a
    pickle that needs more than tensors to load."""
    if not is_url(ref):
        return _read_weights(Path(ref))
    path = resolve_weights(ref)
    try:
        return _read_weights(path)
    except MobileNetsError as e:
        # Downloads are checked before they enter the cache, so this copy was damaged since:
        # fetch it once more rather than send the user to find the cache.
        reason = str(e).removeprefix(f"{path}: ")
        path.unlink(missing_ok=True)
        try:
            path = resolve_weights(ref)
        except MobileNetsError as again:
            raise MobileNetsError(f"{again}; its cached copy {path} was unreadable ({reason}) "
                                  "and was deleted") from e
        return _read_weights(path)


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.is_file():
        raise MobileNetsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MobileNetsError(f"{path}: is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. That length's
    # first byte can be 0x80 too, so the '{' at byte 8 decides before the pickle/zip sniffing.
    if head[8:9] != b"{" and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):
        return read_torch_checkpoint(path)
    try:
        # The header first: safetensors checks it and the file's length (a copy cut short)
        # there, which says more than the checksum of what is left would.
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        check_flat(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, MobileNetsError):
            raise
        raise MobileNetsError(f"{path}: not a safetensors file nor a torch checkpoint "
                              f"({str(e).splitlines()[0]})") from e
    return state, _decode_metadata(raw)


def read_torch_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a .pth/.pt file, loaded with `weights_only=True`.

    The state dict is the top level or one of CHECKPOINT_STATE_KEYS; metadata is the
    checkpoint's "metadata" entry if it has one.
    """
    try:
        # An open file, not the path: torch.load reads any path named *.safetensors as
        # safetensors, which would answer a renamed pickle with safetensors' own exception.
        with open(path, "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        what = (f"it would import {found.group(1)}" if found else detail.group(1) if detail
                else str(e).splitlines()[0])
        raise MobileNetsError(f"{path}: refused to unpickle: {what}; only tensors and plain "
                              "containers are loaded (torch.load weights_only=True)") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
            IndexError) as e:  # what torch's readers raise for damaged archives and pickles
        raise MobileNetsError(f"{path}: not a readable torch checkpoint, truncated or corrupt "
                              f"({(str(e).splitlines() or [type(e).__name__])[0][:120]})") from e
    meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
    if isinstance(obj, dict) and not _is_state(obj):
        obj = next((obj[k] for k in CHECKPOINT_STATE_KEYS if _is_state(obj.get(k))), None)
    if not _is_state(obj):
        raise MobileNetsError(f"{path}: no state dict in this checkpoint; expected tensors at the "
                              f"top level or under one of {', '.join(CHECKPOINT_STATE_KEYS)}")
    return dict(obj), meta if isinstance(meta, dict) else {}


def _is_state(obj) -> bool:
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the index order every source here uses
    (generated from torchvision's bundled category list)."""
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def cache_dir() -> Path:
    """Downloaded weights go to $MOBILENETS_CACHE, else to torch.hub's directory."""
    env = os.environ.get("MOBILENETS_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "mobilenets"


def is_url(ref) -> bool:
    return str(ref).startswith(("http://", "https://"))


def cached_name(url: str) -> str:
    """The cache's file name for `url`: the URL's file name with a hash of the whole URL before
    its suffix (torch.hub's `name-hash.ext`), so that two URLs ending in the same name never
    share a copy. Characters outside [A-Za-z0-9._-] become '_'."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise MobileNetsError(f"{url}: the URL names no file; expected e.g. https://host/v2.safetensors")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "weights"
    digest = hashlib.sha256(url.encode()).hexdigest()[:URL_HASH_CHARS]
    stem, suffix = os.path.splitext(name)
    return f"{stem}-{digest}{suffix}"


def resolve_weights(ref: str | os.PathLike) -> Path:
    """A local path for `ref`: the path itself, or the cached download of an http(s) URL."""
    if not is_url(ref):
        return Path(ref)
    url = str(ref)
    dest = cache_dir() / cached_name(url)
    if dest.is_file():
        return dest
    with atomic_path(dest) as tmp:
        _download(url, tmp)
        try:
            _read_weights(tmp)  # a page that is not weights never enters the cache
        except MobileNetsError as e:
            raise MobileNetsError(f"{url}: {str(e).removeprefix(f'{tmp}: ')}") from e
    return dest


def _download(url: str, dest: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mobilenets"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(dest, "wb") as f:
            shutil.copyfileobj(response, f)
    except urllib.error.HTTPError as e:
        raise MobileNetsError(f"{url}: cannot download (HTTP {e.code} {e.reason})") from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        text = (f"no answer within {DOWNLOAD_TIMEOUT_S} s" if isinstance(reason, TimeoutError)
                else (str(reason).splitlines() or [type(reason).__name__])[0])
        raise MobileNetsError(f"{url}: cannot download ({text})") from e


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON-decoded metadata of a safetensors file, read from its header alone; {} for any
    other file (loading it reports what is wrong)."""
    try:
        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return {}
    return _decode_metadata(raw)


def _decode_metadata(raw: dict) -> dict:
    """safetensors metadata holds strings; ours are JSON values (others are kept as given)."""
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past Python's stack
            meta[k] = v
    return meta


def check_metadata(meta: dict, source, min_resolution: int = 1, in_chans: int | None = None,
                   outputs: int | None = None, required: tuple[str, ...] = ()) -> None:
    """Refuse `classes` and `preprocessing` that the model cannot use, before they size anything.

    `classes`: a list of `outputs` names. `preprocessing` (the keys it has, and the `required`
    ones): resolution an integer in [min_resolution, MAX_RESOLUTION] (the smallest input is the
    network's total stride), resize in [resolution, 2 × resolution], in_chans the model's (or at
    most MAX_IN_CHANS), mean and std in_chans finite numbers (std > 0), interpolation one of
    INTERPOLATIONS. One line naming `source`, the key and what is allowed.
    """
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise MobileNetsError(f"{source}: metadata classes={_short(classes)} is not a list of "
                                  "names; allowed: a JSON list of strings")
        if outputs is not None and len(classes) != outputs:
            raise MobileNetsError(f"{source}: metadata classes has {len(classes)} names for a model "
                                  f"with {outputs} outputs; allowed: exactly {outputs} names")
    pre = meta.get("preprocessing", {} if not required else None)
    if not isinstance(pre, dict):
        raise MobileNetsError(f"{source}: metadata preprocessing={_short(pre)} is not a JSON object; "
                              f"allowed: an object with {', '.join(required or PREPROCESSING_KEYS)}")
    missing = [k for k in required if k not in pre]
    if missing:
        raise MobileNetsError(f"{source}: metadata preprocessing has no {', '.join(missing)}; "
                              f"allowed: an object with {', '.join(required)}")

    def refuse(key: str, allowed: str) -> MobileNetsError:
        return MobileNetsError(f"{source}: metadata preprocessing.{key}={_short(pre[key])} is "
                               f"refused; allowed: {allowed}")

    resolution = pre.get("resolution")
    if "resolution" in pre and not _int_in(resolution, min_resolution, MAX_RESOLUTION):
        raise refuse("resolution", f"an integer in [{min_resolution}, {MAX_RESOLUTION}]")
    if "resize" in pre:
        low, high = (resolution, 2 * resolution) if resolution else (min_resolution, 2 * MAX_RESOLUTION)
        if not _int_in(pre["resize"], low, high):
            raise refuse("resize", f"an integer in [{low}, {high}] (resolution to 2 × resolution)")
    chans = pre.get("in_chans", in_chans)
    if "in_chans" in pre:
        low, high = (in_chans, in_chans) if in_chans is not None else (1, MAX_IN_CHANS)
        if not _int_in(chans, low, high):
            raise refuse("in_chans", f"{in_chans}, the model's input channels" if in_chans is not None
                         else f"an integer in [1, {MAX_IN_CHANS}]")
    for key in ("mean", "std"):
        values = pre.get(key)
        fits = (isinstance(values, (list, tuple)) and (chans is None or len(values) == chans)
                and all(_is_finite(v) and (key == "mean" or v > 0) for v in values))
        if key in pre and not fits:
            raise refuse(key, f"a list of {chans or 'in_chans'} finite numbers"
                              + (" above 0" if key == "std" else ""))
    if "interpolation" in pre and pre["interpolation"] not in INTERPOLATIONS:
        raise refuse("interpolation", f"one of {', '.join(INTERPOLATIONS)}")


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


BACKBONE_MODULES = ("stem", "blocks", "last_conv")
# A backbone that fills less than this share of a model's backbone tensors is another variant
# or width whose names happen to meet (V2's first blocks in a V4), not a start.
MIN_BACKBONE_SHARE = 0.5
_FAMILY = re.compile(r"mobilenet_v\d")


def _family(name: str) -> str | None:
    """"mobilenet_v2" for mobilenet_v2_100, deeplabv3_mobilenet_v2, ...; None if unnamed."""
    found = _FAMILY.search(name)
    return found.group(0) if found else None


def upgrade_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state` with the names of earlier layouts renamed to the ones `model` uses, decided from
    the model's own keys:
    - a conv-BN-activation unit `X` was a sequence: `X.0` conv and `X.1` batch norm, or with TF
      "same" padding on a strided layer `X.1` conv and `X.2` batch norm; it is now `X.conv`,
      `X.bn` (the batch norm's `running_mean` tells the two apart);
    - a detection or segmentation model held `stem`, `blocks`, `last_conv` at its top level;
      they are now under `backbone.` (and a classifier takes a task model's backbone without).
    Keys that already fit, and any this cannot place, are kept as they are."""
    own = model.state_dict()
    if all(k in own for k in state):
        return state
    tops = {k.split(".", 1)[0] for k in own}

    def moved(key: str) -> str:
        head = key.split(".", 1)[0]
        if key in own:
            return key
        if head in BACKBONE_MODULES and head not in tops and "backbone" in tops:
            return "backbone." + key
        if head == "backbone" and "backbone" not in tops:
            return key.removeprefix("backbone.")
        return key

    state = {moved(k): v for k, v in state.items()}
    out = {}
    for key, tensor in state.items():
        unit, _, param = key.rpartition(".")
        unit, _, index = unit.rpartition(".")
        if (key not in own and index.isdigit() and f"{unit}.conv.weight" in own
                and f"{unit}.bn.running_mean" in own):
            bn = 2 if f"{unit}.2.running_mean" in state else 1
            part = {bn - 1: "conv", bn: "bn"}.get(int(index))
            key = f"{unit}.{part}.{param}" if part else key
        out[key] = tensor
    return out


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly (after `upgrade_state`); on mismatch one line naming the first missing,
    unexpected, misshaped keys."""
    state = upgrade_state(state, model)
    problems = state_mismatch(model.state_dict(), state)
    if problems:
        raise MobileNetsError(f"{source}: does not fit {getattr(model, 'model_name', 'the model')}; "
                              + problems)
    model.load_state_dict(state)


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """'' if `state` has exactly `own`'s names and shapes (which may be meta tensors), else the
    first missing, unexpected and misshaped names ('file shape vs model shape')."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    return "; ".join(f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''} ({len(items)})"
                     for label, items in (("missing", missing), ("unexpected", unexpected),
                                          ("wrong shape", shaped)) if items)


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor | None:
    """A first convolution's weight for `in_chans` input channels, from one made for grayscale
    or for colour: a grayscale kernel is repeated over the channels and divided by their number,
    so an image whose channels are all equal gives the response it gave before; a colour kernel
    is summed over its channels, the same response to a grayscale image fed as one channel.
    None where neither side has one channel."""
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if have == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    return None


def load_backbone(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Start a detector, segmenter or classifier from another model's backbone: the tensors of
    `stem`, `blocks` and `last_conv` (a task model's under `backbone.`, see `upgrade_state`)
    whose names and shapes both models share (a classifier's
    weights into a task model, as torchvision's `weights_backbone`). A stem convolution made
    for one input channel starts a colour model and the other way round
    (`adapt_input_channels`). Returns {"loaded", "backbone_tensors", "adapted", "skipped"}:
    what was copied, how many backbone tensors `model` has, the names whose input channels were
    adapted, and the names whose shapes differ otherwise."""
    state, meta = load_weights(path)
    mine, theirs = getattr(model, "model_name", "the model"), meta.get("model")
    if isinstance(theirs, str) and _family(theirs) and _family(mine) and _family(theirs) != _family(mine):
        raise MobileNetsError(f"{path}: a {theirs} backbone cannot start {mine}: another MobileNet "
                              f"family ({_family(theirs)} vs {_family(mine)})")
    state = upgrade_state(state, model)
    own = model.state_dict()
    # BN's step counters are scalars that fit anything and carry nothing across
    ours = [k for k in own if k.removeprefix("backbone.").split(".")[0] in BACKBONE_MODULES
            and not k.endswith("num_batches_tracked")]
    shared = [k for k in ours if k in state]
    fits = {k: state[k] for k in shared if state[k].shape == own[k].shape}
    if not fits:
        raise MobileNetsError(f"{path}: shares no backbone tensor ({', '.join(BACKBONE_MODULES)}) "
                              f"with {getattr(model, 'model_name', 'the model')}; is it a MobileNet "
                              "of the same family and width?")
    adapted = []
    first = next((k for k in ours if k.endswith(".weight") and own[k].ndim == 4), None)
    if first in state and first not in fits and state[first].ndim == 4:
        theirs, mine = state[first], own[first]
        weight = adapt_input_channels(theirs, mine.shape[1])
        if theirs.shape[0] == mine.shape[0] and theirs.shape[2:] == mine.shape[2:] and weight is not None:
            fits[first] = weight
            adapted.append(first)
    if len(fits) < MIN_BACKBONE_SHARE * len(ours):
        raise MobileNetsError(f"{path}: its {theirs or 'model'} backbone fills only {len(fits)} of "
                              f"{mine}'s {len(ours)} backbone tensors (allowed: at least "
                              f"{MIN_BACKBONE_SHARE:.0%}); is it the same width and variant?")
    model.load_state_dict(fits, strict=False)
    return {"loaded": len(fits), "backbone_tensors": len(ours), "adapted": adapted,
            "skipped": [k for k in shared if k not in fits]}


TASK_NAMES = ("detection", "segmentation")


def task_of(path) -> str | None:
    """"detection" or "segmentation" for a task weights file, else None (classifiers, other
    formats)."""
    task = read_metadata(path).get("task") if str(path).endswith(".safetensors") else None
    return task if task in TASK_NAMES else None


def save_task_weights(path, model, task: str, classes: list[str], resolution: int, **extra) -> None:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    save_weights(path, model, {"task": task, "classes": list(classes),
                               "preprocessing": {"resolution": resolution, "mean": list(cfg["mean"]),
                                                 "std": list(cfg["std"]),
                                                 "in_chans": cfg.get("in_chans", 3)},
                               **extra})


