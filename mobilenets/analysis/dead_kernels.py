"""Dead depthwise kernels: the study notes' observation that many depthwise kernels of a trained
MobileNetV1 end up (near) zero, and that V2's linear bottlenecks leave fewer of them.

A depthwise conv is a Conv2d with groups == in_channels > 1; each of its output channels has one
k×k kernel. A kernel is dead when its L2 norm is below a threshold: relative to the median
kernel norm of its layer (default 1e-2 of it) or absolute (default 1e-2). The weights are read
as trained, not folded with the batch norm that follows: BN rescales each channel, so a folded
kernel's size says as much about the BN statistics as about the conv.

`train_matched_pair` trains a V1 and a V2 of matched multiply-adds with the ablations' trainer
call (`ablate.train_arm`) so that one command gives both files.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from ..core.errors import MobileNetsError
from ..core.figures import new_figure, save_figure
from ..models.mobilenet import load_model
from ..models.profile import profile
from .ablate import Schedule, _madds, match_width, train_arm

RELATIVE = 1e-2
ABSOLUTE = 1e-2
BASE_V2 = ("mobilenet_v2", 0.35)   # the fashion-mnist recipe's model; V1 gets its multiply-adds
# Three epochs of 20,000 images for each of the two models: about 11 minutes at ~180 img/s.
DEFAULT_SCHEDULE = Schedule(epochs=3, batch_size=128, limit_train=20000, limit_test=2000)
CLAIM = ("trained MobileNetV1 depthwise kernels are often dead (near zero); V2's linear "
         "bottlenecks reduce this (the study notes on V1 and V2)")


def depthwise_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) of every depthwise conv, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.groups == m.in_channels]


def kernel_norms(conv: nn.Conv2d) -> torch.Tensor:
    """L2 norm of each output channel's kernel."""
    return conv.weight.detach().float().flatten(1).norm(dim=1)


def dead_kernels(model: nn.Module, relative: float = RELATIVE, absolute: float = ABSOLUTE) -> dict:
    """Per depthwise layer and overall: how many kernels fall below each threshold."""
    for name, value in (("relative", relative), ("absolute", absolute)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise MobileNetsError(f"{name} threshold {value!r} is out of range; allowed: a number >= 0")
    convs = depthwise_convs(model)
    if not convs:
        raise MobileNetsError("the model has no depthwise conv (Conv2d with groups == in_channels > 1)")
    layers = []
    for name, conv in convs:
        norms = kernel_norms(conv)
        median = float(norms.quantile(0.5))   # the mean of the middle two for an even count
        dead_rel = int((norms < relative * median).sum())
        dead_abs = int((norms < absolute).sum())
        layers.append({"name": name, "kernels": len(norms), "kernel_size": list(conv.kernel_size),
                       "stride": list(conv.stride), "median_norm": median,
                       "min_norm": float(norms.min()), "dead_relative": dead_rel,
                       "dead_absolute": dead_abs, "fraction_relative": dead_rel / len(norms),
                       "fraction_absolute": dead_abs / len(norms)})
    total = sum(layer["kernels"] for layer in layers)
    rel = sum(layer["dead_relative"] for layer in layers)
    ab = sum(layer["dead_absolute"] for layer in layers)
    return {"thresholds": {"relative": relative, "absolute": absolute},
            "depthwise_layers": len(layers), "kernels": total, "dead_relative": rel,
            "dead_absolute": ab, "fraction_relative": rel / total, "fraction_absolute": ab / total,
            "mean_layer_fraction_relative": statistics.fmean(x["fraction_relative"] for x in layers),
            "layers": layers}


def analyze_files(paths, relative: float = RELATIVE, absolute: float = ABSOLUTE) -> dict:
    """`dead_kernels` of each weights file, with the model it holds."""
    if not paths:
        raise MobileNetsError("no weights file given; pass .safetensors files or --train")
    models = []
    for path in paths:
        model, meta = load_model(path)
        kwargs = meta.get("model_kwargs", {})
        report = Path(path).parent / "report.json"   # a trainer's run directory has one
        top1 = json.loads(report.read_text()).get("top1") if report.is_file() else None
        resolution = (meta.get("preprocessing") or {}).get("resolution", 224)
        models.append({"path": str(path), "model": meta.get("model"),
                       "width_mult": kwargs.get("width_mult"), "options": kwargs, "top1": top1,
                       "resolution": resolution, "madds": profile(model, resolution)["madds"],
                       **dead_kernels(model, relative, absolute)})
    return {"claim": CLAIM, "weights": "as trained, not folded with the following batch norm",
            "depthwise": "Conv2d with groups == in_channels > 1; one kernel per output channel",
            "models": models}


def train_matched_pair(runs: str | Path, schedule: Schedule = DEFAULT_SCHEDULE, seed: int = 0,
                       data_dir: str | None = None, progress: bool = True,
                       train_fn=train_arm) -> list[Path]:
    """Train V2 α 0.35 and the V1 of matching multiply-adds (28 px, small input, Fashion-MNIST);
    returns their best.safetensors paths (V1 first). A finished run is not trained again."""
    schedule = schedule.check()
    family, width = BASE_V2
    configs = [("mobilenet_v1", match_width("mobilenet_v1", _madds(family, width))), (family, width)]
    paths = []
    for i, (fam, w) in enumerate(configs, 1):
        run_dir = Path(runs) / schedule.tag() / f"{fam}-{w:g}-seed{seed}"
        best = run_dir / "best.safetensors"
        if not (run_dir / "report.json").is_file() or not best.is_file():
            if progress:
                print(f"[{i}/{len(configs)}] {fam} α={w:g} seed {seed}", file=sys.stderr, flush=True)
            train_fn(fam, {"family": fam, "width_mult": w, "options": {}}, seed, schedule,
                     run_dir, data_dir, progress)
        paths.append(best)
    return paths


def plot_dead_kernels(result: dict, path, which: str = "relative") -> None:
    """Per depthwise layer (input side to output side), one line per model: the dead fraction,
    and the weakest kernel's norm over the layer's median, which shows how far from dead the
    layer is when none has died."""
    fig = new_figure((6.4, 5.4))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for m in result["models"]:
        label = f"{m['model']} α={m['width_mult']:g}" if m["width_mult"] else str(m["model"])
        layers = range(1, len(m["layers"]) + 1)
        top.plot(layers, [100 * layer[f"fraction_{which}"] for layer in m["layers"]], marker="o",
                 label=label)
        bottom.plot(layers, [layer["min_norm"] / layer["median_norm"] for layer in m["layers"]],
                    marker="o", label=label)
    thr = result["models"][0]["thresholds"][which]
    top.set_ylim(0, max(1.0, 1.1 * max(100 * layer[f"fraction_{which}"]
                                       for m in result["models"] for layer in m["layers"])))
    top.set_ylabel("dead kernels (%)")
    top.set_title(f"kernels with L2 norm < {thr:g}" + (" × the layer's median" if which == "relative" else ""),
                  fontsize=9)
    top.legend(fontsize=8)
    bottom.set_ylabel("weakest / median norm")
    bottom.set_ylim(0, 1.05)
    bottom.set_xlabel("depthwise layer (input → output)")
    fig.tight_layout()
    save_figure(fig, path)
