"""Latency tables: the time of every piece of a network (the stem, each block, the last stage)
measured on the engine a model will ship on, so that a search can price a channel plan without
exporting it.

A piece's latency depends on its widths. Each distinct piece (same kind, kernel, stride,
activation, squeeze-excite, shortcut and input size: its *key*) is timed at the corners of its
width box, each width at its base value and at ~30% of it, and at the box's centre; a least-squares
fit of latency on the piece's multiply-adds by kind (1×1 and full convs, depthwise convs,
squeeze-excite) and on the elements it reads and writes then prices any width inside the box.
A model's latency is the sum of its pieces, less the per-call cost every timed piece carries
once (`overhead_ms`, a one-ReLU graph), plus that cost once; `correction` is a per-model
constant, the median miss on a few whole models measured when the table is made (the plan
itself and uniform cuts of it), which absorbs what a sum of isolated pieces cannot see: layout
reorders between pieces, fusion across them and caches warm from the previous piece.
"""
from __future__ import annotations

import datetime
import functools
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.errors import MobileNetsError
from ...core.io import atomic_write_text
from ...core.machine import describe_machine
from ...deploy.bench import calibrate_batchnorm, time_runs
from ...models.layers import ConvBNAct, make_activation
from ...models.mobilenet import build_block
from ...models.plan import check_plan, has_expansion, joins_input, plan_of, scale_plan
from ...models.specs import AttentionSpec, BlockSpec, ConvSpec
from .engines import check_engine, engine_versions, model_call, piece_call

TABLE_FORMAT = "mobilenets-latency-table/1"
LOW_FRACTION = 0.3
CORRECTION_SCALES = (1.0, 0.75, 0.5)


class Tail(nn.Module):
    """The last stage as `MobileNet` builds and runs it: last 1×1 conv, pool, head layer
    (V4: with batch norm), classifier."""

    def __init__(self, arch, in_ch: int, last: int | None, head: int | None, classes: int, **norm):
        super().__init__()
        self.last_conv = ConvBNAct(in_ch, last, 1, act=arch.last_conv_act, **norm) if last else nn.Identity()
        ch = last or in_ch
        if head:
            layers = [nn.Linear(ch, head, bias=not arch.head_norm)]
            layers += [nn.BatchNorm1d(head)] if arch.head_norm else []
            self.head = nn.Sequential(*layers, make_activation(arch.head_act))
        else:
            self.head = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head or ch, classes) if classes else nn.Identity()

    def forward(self, x):
        return self.classifier(self.head(self.pool(self.last_conv(x)).flatten(1)))


def _round(v: float, step: int) -> int:
    return max(step, int(round(v / step)) * step)


def _piece_specs(model: nn.Module, resolution: int) -> list[dict]:
    """One entry per piece of `model` at `resolution`: name, key, input size, width variables."""
    arch = model.arch
    size = -(-resolution // arch.stem_stride)
    in_chans = model.stem.conv.in_channels
    pieces = [{"name": "stem", "key": f"stem k3 s{arch.stem_stride} {arch.stem_act} in{in_chans} "
               f"H{resolution}", "size": resolution, "vars": ["out"]}]
    for i, spec in enumerate(arch.blocks):
        stride = spec.stride
        if isinstance(spec, BlockSpec):
            kind = (f"ib k{spec.kernel} start{spec.start_kernel} fused{spec.expand_kernel} "
                    f"{spec.act} proj-{spec.proj_act} se{int(spec.se_ch > 0)} ls{int(bool(spec.layer_scale))} "
                    f"{spec.shortcut}")
            if joins_input(spec):
                variables = ["group", "expand"] if has_expansion(spec) else ["group"]
            else:
                variables = ["in", "expand", "out"] if has_expansion(spec) else ["in", "out"]
        elif isinstance(spec, ConvSpec):
            kind, variables = f"conv k{spec.kernel} {spec.act}", ["in", "out"]
        else:
            kind = f"mqa h{spec.heads} kd{spec.key_dim} kv{spec.kv_stride} {spec.shortcut}"
            variables = ["group"] if joins_input(spec) else ["in", "out"]
        pieces.append({"name": f"blocks.{i}",
                       "key": f"{kind} s{stride} d{spec.dilation} H{size} base{spec.in_ch}/"
                              f"{spec.expand_ch if isinstance(spec, BlockSpec) else 0}/{spec.out_ch}",
                       "size": size, "vars": variables})
        size = -(-size // stride)
    pieces.append({"name": "tail", "key": f"tail H{size} base{arch.blocks[-1].out_ch}/"
                   f"{arch.last_conv_ch}/{arch.head_ch}", "size": size, "vars": ["in"]})
    return pieces


def _piece_widths(piece: dict, plan: dict) -> dict:
    """The widths a piece has under `plan`, by role."""
    name = piece["name"]
    if name == "stem":
        return {"out": plan["stem"]}
    if name == "tail":
        return {"in": plan["out"][-1], "last": plan["last_conv"], "head": plan["head"]}
    i = int(name.split(".")[1])
    inp = plan["stem"] if i == 0 else plan["out"][i - 1]
    return {"in": inp, "out": plan["out"][i], "expand": plan["expand"][i] or inp, "se": plan["se"][i]}


def _features(model: nn.Module, piece: dict, w: dict) -> list[float]:
    """Multiply-adds by kind and elements moved, for one piece at widths `w`: the regressors of
    the piece's latency."""
    size = piece["size"]
    if piece["name"] == "stem":
        arch = model.arch
        out_size = -(-size // arch.stem_stride)
        in_chans = model.stem.conv.in_channels
        return [1.0, 9 * in_chans * w["out"] * out_size ** 2, 0.0, 0.0, w["out"] * out_size ** 2]
    if piece["name"] == "tail":
        last = w["last"] or w["in"]
        ch = w["head"] or last
        classes = model.classifier.out_features if isinstance(model.classifier, nn.Linear) else 0
        return [1.0, w["in"] * (w["last"] or 0) * size ** 2 + last * (w["head"] or 0) + ch * classes,
                0.0, 0.0, (w["in"] + (w["last"] or 0)) * size ** 2]
    spec = model.arch.blocks[int(piece["name"].split(".")[1])]
    out_size = -(-size // spec.stride)
    if isinstance(spec, ConvSpec):
        return [1.0, spec.kernel ** 2 * w["in"] * w["out"] * out_size ** 2, 0.0, 0.0,
                w["in"] * size ** 2 + w["out"] * out_size ** 2]
    if isinstance(spec, AttentionSpec):
        inner = spec.heads * spec.key_dim
        return [1.0, (w["in"] * (inner + spec.key_dim + spec.value_dim) + inner * w["out"]) * size ** 2,
                0.0, 0.0, (w["in"] + w["out"]) * size ** 2]
    e = w["expand"]
    conv = e * w["out"] * out_size ** 2
    if has_expansion(spec):
        k = spec.expand_kernel
        conv += k * k * w["in"] * e * (out_size if k > 1 else size) ** 2
    dw = (spec.kernel ** 2 * e * out_size ** 2 if spec.kernel else 0) + spec.start_kernel ** 2 * w["in"] * size ** 2
    return [1.0, float(conv), float(dw), float(2 * e * w["se"]),
            float((w["in"] + e) * size ** 2 + (e + w["out"]) * out_size ** 2)]


def _piece_module(model: nn.Module, piece: dict, w: dict) -> nn.Module:
    name = piece["name"]
    arch = model.arch
    norm = dict(padding="same" if type(model.stem.conv).__name__ == "Conv2dSame" else "symmetric",
                bn_eps=model.stem.bn.eps)
    if name == "stem":
        return ConvBNAct(model.stem.conv.in_channels, w["out"], 3, arch.stem_stride,
                         act=arch.stem_act, **norm)
    if name == "tail":
        classes = model.classifier.out_features if isinstance(model.classifier, nn.Linear) else 0
        return Tail(arch, w["in"], w["last"], w["head"], classes, **norm)
    spec = arch.blocks[int(name.split(".")[1])]
    if isinstance(spec, BlockSpec):
        spec = replace(spec, in_ch=w["in"], out_ch=w["out"], expand_ch=w["expand"], se_ch=w["se"],
                       expand_conv=has_expansion(spec))
    else:
        spec = replace(spec, in_ch=w["in"], out_ch=w["out"])
    return build_block(spec, **norm)


def _sample_widths(piece: dict, base: dict, step: int) -> list[dict]:
    """The corners of the piece's width box (each variable at its base and at LOW_FRACTION of
    it) and the box's centre."""
    variables = piece["vars"]
    points = []
    for corner in range(2 ** len(variables)):
        points.append({v: 1.0 if corner >> k & 1 else LOW_FRACTION for k, v in enumerate(variables)})
    points.append({v: (1 + LOW_FRACTION) / 2 for v in variables})
    out = []
    for fractions in points:
        w = dict(base)
        for v, f in fractions.items():
            roles = ("in", "out") if v == "group" else (v,)
            for role in roles:
                w[role] = _round(base[role] * f, step)
        if piece["name"] == "tail":
            w["last"], w["head"] = base["last"], base["head"]
            if "in" in fractions:
                f = fractions["in"]
                w["last"] = _round(base["last"] * f, step) if base["last"] else None
                w["head"] = _round(base["head"] * f, step) if base["head"] else None
        elif "expand" not in fractions and piece["name"] != "stem":
            w["expand"] = w["in"] if base["expand"] == base["in"] else base["expand"]
        if base.get("se"):
            w["se"] = _round(base["se"] * w["expand"] / base["expand"], step)
        out.append(w)
    return out


ROUNDS = 5          # timed rounds per measurement, each after a pause
ROUND_PAUSE_S = 0.05


def _time(call, runs: int, warmup: int) -> float:
    """ms per call: the lowest of the medians of `ROUNDS` rounds, each after a short pause and
    `warmup` calls. On these shared 2-core machines a slow spell lasts tens of calls (one plan
    read 1.3 ms in one run of 30 calls and 1.7 ms in the next); a round that misses every
    spell is the machine's speed, and one median over all rounds is not."""
    medians = []
    for r in range(ROUNDS):
        time.sleep(ROUND_PAUSE_S)
        n = max(3, runs // ROUNDS + (r < runs % ROUNDS))
        medians.append(statistics.median(time_runs(call, n, warmup, budget_s=10.0 / ROUNDS)))
    return min(medians) * 1e3


def _input(model: nn.Module, piece: dict, w: dict, batch: int) -> torch.Tensor:
    if piece["name"] == "stem":
        c = model.stem.conv.in_channels
    else:
        c = w["in"]
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, c, piece["size"], piece["size"], generator=g)


def _realistic(module: nn.Module, x: torch.Tensor) -> nn.Module:
    # Random-init BN folds into bias-free convs that engines may skip work for: give every
    # piece the statistics of its own (Gaussian) input instead.
    calibrate_batchnorm(module, torch.cat([x, torch.randn_like(x)]) if len(x) == 1 else x)
    return module


def _keeps_torch_threads(fn):
    """Time at the engine's thread count, then give PyTorch back the count its caller had: the
    caller's training should not run on the latency's one thread."""
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return timed


@_keeps_torch_threads
def measure_table(model: nn.Module, engine: str, threads: int = 1, batch: int = 1,
                  resolution: int | None = None, step: int = 8, runs: int = 30, warmup: int = 5,
                  progress=None, log=print) -> dict:
    """Time every piece of `model` (any channel plan) on `engine` and return the table."""
    check_engine(engine)
    resolution = resolution or (getattr(model, "pretrained_cfg", None) or {}).get("resolution", 224)
    torch.set_num_threads(threads)
    model = model.eval()
    base_plan = plan_of(model.arch)
    pieces = _piece_specs(model, resolution)
    entries: dict[str, dict] = {}
    todo = [p for p in pieces if p["key"] not in entries]
    unique = {p["key"]: p for p in todo}
    bar = progress(total=len(unique), desc=f"latency table ({engine})") if progress else None
    with tempfile.TemporaryDirectory(prefix="mobilenets-lut-") as tmp:
        overhead = _time(piece_call(engine, nn.ReLU(), torch.randn(batch, 8, 8, 8), Path(tmp), threads),
                         runs, warmup)
        for key, piece in unique.items():
            base = _piece_widths(piece, base_plan)
            points, feats = [], []
            for w in _sample_widths(piece, base, step):
                x = _input(model, piece, w, batch)
                module = _realistic(_piece_module(model, piece, w), x)
                ms = _time(piece_call(engine, module, x, Path(tmp), threads), runs, warmup)
                points.append({**w, "ms": round(ms, 5)})
                feats.append(_features(model, piece, w))
            coef = _fit(np.array(feats), np.array([p["ms"] for p in points]))
            entries[key] = {"vars": piece["vars"], "points": points, "coef": coef}
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        table = {"format": TABLE_FORMAT, "engine": engine, "threads": threads, "batch": batch,
                 "resolution": resolution, "step": step, "model": getattr(model, "model_name", None),
                 "model_kwargs": {k: v for k, v in (getattr(model, "model_kwargs", None) or {}).items()
                                  if k != "channel_plan"},
                 "base_plan": base_plan, "in_chans": model.stem.conv.in_channels,
                 "num_classes": model.classifier.out_features if isinstance(model.classifier, nn.Linear) else 0,
                 "machine": describe_machine(threads), "versions": engine_versions(engine),
                 "settings": {"runs": runs, "warmup": warmup,
                              "statistic": f"lowest median of {ROUNDS} rounds",
                              "low_fraction": LOW_FRACTION},
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "overhead_ms": round(overhead, 5),
                 "pieces": [{"name": p["name"], "key": p["key"], "size": p["size"]} for p in pieces],
                 "entries": entries}
        fits = []
        for scale in CORRECTION_SCALES:
            plan = base_plan if scale == 1.0 else scale_plan(base_plan, scale, step)
            measured = measure_model(_planned(model, plan), engine, threads, batch, resolution,
                                     Path(tmp), runs, warmup)
            fits.append({"scale": scale, "measured_ms": round(measured, 5),
                         "sum_ms": round(predict(table, plan, corrected=False), 5)})
            log(f"  whole model at {scale:.2f}× widths: measured {measured:.3f} ms, "
                f"sum of pieces {fits[-1]['sum_ms']:.3f} ms")
    table["correction"] = _offset([f["sum_ms"] for f in fits], [f["measured_ms"] for f in fits]) | {"fitted_on": fits}
    return table


def _planned(model: nn.Module, plan: dict) -> nn.Module:
    from ...models.mobilenet import create_model
    kwargs = {**(getattr(model, "model_kwargs", None) or {}), "channel_plan": plan}
    return create_model(model.model_name, **kwargs).eval()


def _fit(features: np.ndarray, ms: np.ndarray) -> list[float]:
    # Columns that are zero at every point (no depthwise conv, no SE) get no coefficient;
    # scaling keeps the least-squares problem well conditioned.
    scale = np.abs(features).max(axis=0)
    scale[scale == 0] = 1.0
    coef, *_ = np.linalg.lstsq(features / scale, ms, rcond=None)
    return [float(c) for c in coef / scale]


def _offset(sums: list[float], measured: list[float]) -> dict:
    # A constant, the median of the misses: a line through three points let one noisy
    # measurement tilt every prediction (a 0.5× model read slower than the 0.75× one here once).
    return {"scale": 1.0, "offset_ms": float(statistics.median(m - s for s, m in zip(sums, measured)))}


@_keeps_torch_threads
def measure_models(models: list[nn.Module], engine: str, threads: int, batch: int, resolution: int,
                   workdir: Path, runs: int = 60, warmup: int = 5, passes: int = 1) -> list[float]:
    """ms (as `_time` measures it, the lowest of `passes` such measurements) of each model's
    exported file on `engine`, the models timed in turns so that a slow spell of the machine falls
    on all of them alike (random BN statistics of an untrained model do not matter for speed)."""
    torch.set_num_threads(threads)
    calls = []
    for i, model in enumerate(models):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, model.stem.conv.in_channels, resolution, resolution, generator=g)
        folder = Path(workdir) / f"model{i}"
        folder.mkdir(parents=True, exist_ok=True)
        calls.append(model_call(engine, model, x, folder, threads))
    best = [float("inf")] * len(calls)
    for _ in range(passes):
        for i, call in enumerate(calls):
            best[i] = min(best[i], _time(call, runs, warmup))
    return best


def measure_model(model: nn.Module, engine: str, threads: int, batch: int, resolution: int,
                  workdir: Path, runs: int = 60, warmup: int = 5, passes: int = 1) -> float:
    """`measure_models` of one model."""
    return measure_models([model], engine, threads, batch, resolution, workdir, runs, warmup, passes)[0]


def predict(table: dict, plan: dict, corrected: bool = True) -> float:
    """Predicted latency (ms) of the table's model under `plan`."""
    full = {**table["base_plan"], **plan}
    stub = _feature_model(table["model"], json.dumps(table["model_kwargs"], sort_keys=True),
                          table.get("num_classes", 0))
    total = table["overhead_ms"]
    for p in table["pieces"]:
        entry = table["entries"][p["key"]]
        piece = {"name": p["name"], "size": p["size"], "vars": entry["vars"]}
        w = _piece_widths(piece, full)
        total += max(0.0, float(np.dot(entry["coef"], _features(stub, piece, w)))) - table["overhead_ms"]
    if corrected and "correction" in table:
        total = table["correction"]["scale"] * total + table["correction"]["offset_ms"]
    return total


@functools.lru_cache(maxsize=16)
def _feature_model(name: str, kwargs_json: str, num_classes: int):
    """What `_features` reads of a model (its arch, stem and classifier), built on the meta
    device from a table's model name and options."""
    from ...models.mobilenet import create_model
    with torch.device("meta"):
        return create_model(name, **{**json.loads(kwargs_json), "num_classes": num_classes})


def madds_table(model: nn.Module, resolution: int) -> dict:
    """A table that prices a plan in multiply-adds (1e-6 "ms" each) instead of time: the
    profiler's count for every network whose pieces are convolutions, squeeze-excite and linear
    layers (attention's two matrix products are not among its features)."""
    pieces = _piece_specs(model, resolution)
    coef = [0.0, 1e-6, 1e-6, 1e-6, 0.0]
    return {"format": TABLE_FORMAT, "engine": "madds", "resolution": resolution,
            "model": model.model_name, "model_kwargs": {k: v for k, v in model.model_kwargs.items()
                                                         if k != "channel_plan"},
            "num_classes": model.classifier.out_features if isinstance(model.classifier, nn.Linear) else 0,
            "base_plan": plan_of(model.arch), "overhead_ms": 0.0,
            "pieces": [{"name": p["name"], "key": p["key"], "size": p["size"]} for p in pieces],
            "entries": {p["key"]: {"vars": p["vars"], "points": [], "coef": coef} for p in pieces}}


def save_table(table: dict, path) -> None:
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")


def load_table(path) -> dict:
    """Read a table file; one line if it is not one, or is damaged."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MobileNetsError(f"{path}: not a readable latency table ({type(e).__name__})") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise MobileNetsError(f"{path}: not a {TABLE_FORMAT} file")
    try:
        for p in table["pieces"]:
            entry = table["entries"][p["key"]]
            if len(entry["coef"]) != 5 or not all(np.isfinite(entry["coef"])):
                raise ValueError(p["key"])
        float(table["overhead_ms"]), table["base_plan"]["out"], table["machine"]["model_name"]
    except (KeyError, TypeError, ValueError) as e:
        raise MobileNetsError(f"{path}: a damaged latency table (entry {e} is missing or not numeric)") from None
    return table


def check_table(table: dict, path, engine: str, threads: int, batch: int, model: nn.Module | None = None) -> None:
    """Refuse a table measured on another engine, thread count, batch, CPU or model."""
    from ...core.machine import cpu_description
    here = cpu_description()
    wanted = {"engine": engine, "threads": threads, "batch": batch}
    got = {k: table[k] for k in wanted}
    there = table["machine"]
    cpu_there = f"{there.get('model_name')} (family {there.get('family')} model {there.get('model')})"
    cpu_here = f"{here['model_name']} (family {here['family']} model {here['model']})"
    if got != wanted or cpu_there != cpu_here:
        raise MobileNetsError(
            f"{path}: measured with {table['engine']} on {table['threads']} thread(s) at batch "
            f"{table['batch']} on {cpu_there}; asked for {engine} on {threads} thread(s) at batch "
            f"{batch} on {cpu_here}: measure a table for this with `mobilenets latency-table`")
    if model is not None:
        try:
            check_plan(model.arch, table["base_plan"])
        except MobileNetsError as e:
            raise MobileNetsError(f"{path}: measured for another network ({table['model']}): {e}") from None
        if _piece_specs_keys(model, table["resolution"]) != [p["key"].split(" base")[0] for p in table["pieces"]]:
            raise MobileNetsError(f"{path}: measured for {table['model']} {table['model_kwargs']} at "
                                  f"{table['resolution']} px, whose pieces differ from this model's")


def _piece_specs_keys(model: nn.Module, resolution: int) -> list[str]:
    return [p["key"].split(" base")[0] for p in _piece_specs(model, resolution)]


@_keeps_torch_threads
def piece_book_latency(model: nn.Module, engine: str, threads: int, batch: int, resolution: int,
                       book: dict, runs: int = 30, warmup: int = 5) -> float:
    """The latency of `model` as the sum of its pieces, each timed once at its exact widths and
    kept in `book` (key → ms), so candidates of a search that share a piece share its timing:
    a table keyed by whole blocks, as Once-for-All's. `book["overhead_ms"]` is the per-call cost
    counted once."""
    check_engine(engine)
    torch.set_num_threads(threads)
    model = model.eval()
    plan = plan_of(model.arch)
    with tempfile.TemporaryDirectory(prefix="mobilenets-lut-") as tmp:
        if "overhead_ms" not in book:
            book["overhead_ms"] = _time(piece_call(engine, nn.ReLU(), torch.randn(batch, 8, 8, 8),
                                                   Path(tmp), threads), runs, warmup)
        total = book["overhead_ms"]
        for piece in _piece_specs(model, resolution):
            w = _piece_widths(piece, plan)
            key = f"{piece['key']} widths {json.dumps(w, sort_keys=True)}"
            if key not in book:
                x = _input(model, piece, w, batch)
                module = _realistic(_piece_module(model, piece, w), x)
                book[key] = _time(piece_call(engine, module, x, Path(tmp), threads), runs, warmup)
            total += book[key] - book["overhead_ms"]
    return total
