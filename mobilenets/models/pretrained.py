"""`create_model(name, pretrained=True)`: the upstream ImageNet weights of `registry_weights`,
fetched through the upstream's own client, converted once and kept.

A request names its weights as `pretrained=True` (the model's default tag), a tag in the name
("mobilenet_v4_conv_small.e2400_r224_in1k") or as `pretrained=`, or a Hub repo
(`pretrained="hf-hub:timm/mobilenetv2_100.ra_in1k"`). Then:
1. the converted copy `$MOBILENETS_CACHE/pretrained/<model>.<tag>-<sha256 of the upstream file>.safetensors`
   loads without the network if it is there;
2. else the upstream file is taken from `$MOBILENETS_CACHE/upstream/<file>` if one was dropped
   there, or downloaded: torchvision's and Keras' URLs by `torch.hub.download_url_to_file`
   (torchvision's with the SHA-256 prefix its file names carry), the Hub's files by
   `huggingface_hub.hf_hub_download` (its endpoint setting, HF_ENDPOINT, applies), their SHA-256
   checked against the Hub's ETag; a file that fails its check is deleted and nothing is kept;
3. `convert.convert` builds the model with the options the entry names and loads it exactly; the
   result is written with the entry's preprocessing, classes and provenance.
A different `num_classes` drops the classifier (as timm does) with one warning line; another
`in_chans` adapts the stem as `weights.load_backbone` does.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.errors import MobileNetsError
from ..core.io import atomic_path
from . import mobilenet as _mobilenet
from .convert import convert
from .registry_weights import PretrainedWeights, by_name, default_for, for_hub_id
from .weights import (adapt_input_channels, cache_dir, imagenet_classes, load_state_into,
                      load_weights, save_weights)

HUB_PREFIX = "hf-hub:"


def split_tag(name: str) -> tuple[str, str | None]:
    """("mobilenet_v4_conv_small", "e2400_r224_in1k") for a tagged name; (name, None) else."""
    base, dot, tag = name.partition(".")
    return (base, tag) if dot else (name, None)


def find_weights(name: str, pretrained) -> PretrainedWeights:
    """The registry entry that `create_model(name, pretrained=...)` asks for."""
    base, tag = split_tag(name)
    if isinstance(pretrained, str) and pretrained.startswith(HUB_PREFIX):
        repo_id = pretrained[len(HUB_PREFIX):]
        known = for_hub_id(repo_id)
        if known is not None and known.model == base:
            return known
        # A Hub repo the registry does not list: timm's layout, TF port if timm names it so.
        source = "timm-tf" if repo_id.split("/")[-1].startswith("tf_") else "timm"
        options = {"padding": "same", "bn_eps": 1e-3} if source == "timm-tf" else {"bn_eps": 1e-5}
        return PretrainedWeights(base, repo_id, source, hf_hub_id=repo_id, options=options,
                                 resolution=_mobilenet.model_defaults(base).get("resolution", 224))
    if isinstance(pretrained, str) and tag is None:
        tag = pretrained
    entries = by_name()
    if tag is not None:
        entry = entries.get(f"{base}.{tag}")
        if entry is None:
            tags = [w.tag for w in entries.values() if w.model == base]
            raise MobileNetsError(f"{base} has no pretrained tag {tag!r}; it has "
                                  f"{', '.join(tags) if tags else 'none'} (see `mobilenets models --pretrained`)")
        return entry
    entry = default_for(base)
    if entry is None:
        have = sorted({w.model for w in entries.values()})
        raise MobileNetsError(f"{base} has no published pretrained weights; models with them: "
                              f"{', '.join(have)}")
    return entry


def upstream_drop_path(entry: PretrainedWeights) -> Path:
    return cache_dir() / "upstream" / entry.file_name


def converted_dir() -> Path:
    return cache_dir() / "pretrained"


def _cached_conversion(entry: PretrainedWeights) -> Path | None:
    prefix = entry.hash_prefix or ""
    for path in sorted(converted_dir().glob(f"{entry.name}-*.safetensors")):
        if path.stem.rsplit("-", 1)[1].startswith(prefix[:16]):
            return path
    return None


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _offline_error(entry: PretrainedWeights, reason: str) -> MobileNetsError:
    return MobileNetsError(f"{entry.location}: cannot download ({reason}); without network, save "
                           f"that file as {upstream_drop_path(entry)}")


def _download_url(entry: PretrainedWeights, dest: Path) -> None:
    try:
        torch.hub.download_url_to_file(entry.url, str(dest), hash_prefix=entry.hash_prefix,
                                       progress=False)
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise MobileNetsError(f"{entry.url}: refused, its SHA-256 does not start with "
                                  f"{entry.hash_prefix}; nothing was kept") from e
        raise _offline_error(entry, str(e).splitlines()[0][:120]) from e
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _offline_error(entry, (str(reason).splitlines() or [type(reason).__name__])[0][:120]) from e


def _download_hub(entry: PretrainedWeights) -> tuple[Path, str]:
    """(the Hub file in huggingface_hub's cache under ours, its ETag: the file's SHA-256)."""
    import huggingface_hub
    hub_cache = cache_dir() / "hf"
    # Read now, not at import as huggingface_hub does: the Hub's documented mirror setting.
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    try:
        meta = huggingface_hub.get_hf_file_metadata(
            huggingface_hub.hf_hub_url(entry.hf_hub_id, entry.hf_filename, endpoint=endpoint))
        path = huggingface_hub.hf_hub_download(entry.hf_hub_id, entry.hf_filename,
                                               cache_dir=hub_cache, endpoint=endpoint)
    except Exception as e:  # noqa: BLE001  (the Hub client's errors: HTTP, offline, missing repo)
        text = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise _offline_error(entry, f"{type(e).__name__}: {text}") from e
    return Path(path), (meta.etag or "").strip('"')


def fetch_upstream(entry: PretrainedWeights) -> tuple[Path, str]:
    """(a local copy of the upstream file, its SHA-256), every known hash checked."""
    drop = upstream_drop_path(entry)
    if drop.is_file():
        path, sha = drop, file_hash(drop)
        expected = entry.hash_prefix
    elif entry.url:
        drop.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(drop) as tmp:
            _download_url(entry, tmp)
            _check_md5(entry, tmp)
        return drop, file_hash(drop)
    else:
        path, expected = _download_hub(entry)
        sha = file_hash(path)
        if len(expected) != 64 or not all(c in "0123456789abcdef" for c in expected):
            expected = None  # a git SHA-1 ETag (a small file not in LFS) says nothing of SHA-256
        if expected and sha != expected:
            _forget(path)
            raise MobileNetsError(f"{entry.location}: refused, its SHA-256 {sha} is not the Hub's "
                                  f"{expected}; nothing was kept")
        return path, sha
    if expected and not sha.startswith(expected):
        raise MobileNetsError(f"{path}: SHA-256 {sha} does not start with {expected}, the hash of "
                              f"{entry.location}; replace the file")
    _check_md5(entry, path)
    return path, sha


def _check_md5(entry: PretrainedWeights, path: Path) -> None:
    if entry.md5 and file_hash(path, "md5") != entry.md5:
        raise MobileNetsError(f"{entry.location}: refused, its MD5 {file_hash(path, 'md5')} is not "
                              f"{entry.md5}; nothing was kept")


def _forget(path: Path) -> None:
    """Delete a Hub download that failed its check: the snapshot link and the blob it names."""
    blob = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def provenance(entry: PretrainedWeights, sha256: str) -> dict:
    return {"tag": entry.name, "url": entry.location, "hf_hub_id": entry.hf_hub_id,
            "sha256": sha256, "top1": entry.top1, "top5": entry.top5,
            "metrics_source": entry.metrics_source, "license": entry.license,
            "recipe": entry.recipe}


def converted_weights(entry: PretrainedWeights) -> Path:
    """The converted safetensors of `entry`, made from the upstream file if not cached."""
    cached = _cached_conversion(entry)
    if cached is not None:
        return cached
    upstream, sha = fetch_upstream(entry)
    source = "timm" if entry.source == "timm-tf" else entry.source
    model = convert(source, upstream, entry.model, tf=entry.source == "timm-tf",
                    resolution=entry.resolution, **entry.options)
    resize = int(round(entry.resolution / entry.crop_pct))
    meta = {"preprocessing": dict(resolution=entry.resolution, resize=resize, in_chans=3,
                                  mean=list(entry.mean), std=list(entry.std),
                                  interpolation=entry.interpolation),
            "source": {"framework": entry.source, "file": upstream.name, "sha256": sha},
            "pretrained": provenance(entry, sha)}
    if getattr(model.classifier, "out_features", 0) == 1000:
        meta["classes"] = imagenet_classes()
    out = converted_dir() / f"{entry.name}-{sha[:16]}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, model, meta)
    return out


def create_pretrained(name: str, pretrained, kwargs: dict) -> nn.Module:
    """`create_model` for a registry entry: its converted weights loaded into the model the
    entry and `kwargs` describe (pretrained=False with a tagged name: that model, untrained)."""
    entry = find_weights(name, True if not pretrained else pretrained)
    options = {**entry.options, "resolution": entry.resolution, **kwargs}
    params = _mobilenet._check_options(entry.model, options)
    if not pretrained:
        model = _mobilenet._build(entry.model, options)
        model.pretrained_cfg.update(_cfg_of(entry, model))
        return model
    path = converted_weights(entry)
    state, meta = load_weights(path)
    saved = {k: v for k, v in meta.get("model_kwargs", {}).items() if k in params}
    model = _mobilenet._build(entry.model, {**saved, **options})
    state = _fit_state(model, state, path)
    load_state_into(model, state, str(path))
    own = model.pretrained_cfg
    # The checkpoint's preprocessing, but the input shape and classes of the model built here.
    model.pretrained_cfg = {**own, **meta.get("preprocessing", {}), **_cfg_of(entry, model),
                            **{k: own[k] for k in ("in_chans", "input_size", "resolution", "num_classes")},
                            "source_sha256": meta.get("source", {}).get("sha256")}
    if "classes" in meta and getattr(getattr(model, "classifier", None), "out_features", 0) == len(meta["classes"]):
        model.classes = meta["classes"]
    return model


def _cfg_of(entry: PretrainedWeights, model: nn.Module) -> dict:
    chans = model.pretrained_cfg.get("in_chans", 3)
    mean, std = entry.mean, entry.std
    if chans != len(mean):  # a stem summed over colour sees the channels' mean
        mean, std = (sum(mean) / len(mean),) * chans, (sum(std) / len(std),) * chans
    return {"tag": entry.name, "url": entry.location, "hf_hub_id": entry.hf_hub_id,
            "top1": entry.top1, "top5": entry.top5, "license": entry.license,
            "recipe": entry.recipe, "crop_pct": entry.crop_pct, "mean": tuple(mean),
            "std": tuple(std), "interpolation": entry.interpolation}


def _fit_state(model: nn.Module, state: dict, path: Path) -> dict:
    """The checkpoint's tensors for `model`: without the classifier if its class count differs,
    with the stem adapted to another input channel count, without the layers a features_only
    model does not build."""
    own = model.state_dict()
    head = [k for k in state if k.startswith("classifier.")]
    if head and any(k not in own or own[k].shape != state[k].shape for k in head):
        ours = getattr(getattr(model, "classifier", None), "out_features", 0)
        theirs = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
        for k in head:
            state.pop(k)
        if not getattr(model, "features_only", False):
            warnings.warn(f"{path.name}: its {theirs}-class classifier is dropped; this model's "
                          f"{ours}-class one starts from its initialisation", stacklevel=3)
    stem = "stem.conv.weight"
    if stem in state and stem in own and state[stem].shape != own[stem].shape:
        adapted = adapt_input_channels(state[stem], own[stem].shape[1])
        if adapted is None:
            raise MobileNetsError(f"{path}: its stem takes {state[stem].shape[1]} channels; "
                                  f"in_chans={own[stem].shape[1]} is refused; allowed: 1 or "
                                  f"{state[stem].shape[1]}")
        state[stem] = adapted
    if getattr(model, "features_only", False):
        state = {k: v for k, v in state.items() if k in own}
    for k in own:
        if k.startswith("classifier.") and k not in state:
            state[k] = own[k]
    return state



_mobilenet.PRETRAINED_LOADER[:] = [create_pretrained]
