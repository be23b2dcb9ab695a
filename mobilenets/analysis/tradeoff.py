"""The width multiplier α and resolution ρ as a trade-off (V1 §4.2–4.3, Tables 6–7; V2 Fig. 5):
cost of every (α, ρ) on a grid, measured latency on this machine, and the best pair under a
budget.

Cost is analytic (the profiler); latency is measured here, one image at a time on one thread
as the papers do (V2 Table 4: one core of a Pixel 1), eager fp32 with the allocator tuned
(`mobilenets.tune_allocator`, which the CLI applies) and channels_last, the median of repeated runs.
When ONNX Runtime (the `deploy` extra) is installed, its ONNX Runtime fp32 and int8
forms are timed too.
Accuracy comes from trained checkpoints when given; otherwise `fit` ranks by multiply-adds, the
papers' own proxy. It is a proxy, not a law: within a family accuracy mostly rises with MAdds
across α × ρ, but the reference code's per-checkpoint tables (`tables.V1_CHECKPOINTS`,
`V2_CHECKPOINTS`) have pairs where the cheaper model is the more accurate one: 2 of the 120 pairs
of V1's 16 checkpoints and 5 of the 231 pairs of V2's 22 (`accuracy_inversions`; listed in
docs/paper_tables.md).

`fit` is a grid search over the two multipliers of a fixed table. MobileNetV3's tables came
from elsewhere: a platform-aware architecture search (MnasNet's reinforcement-learning search
for the blocks, rewarded by accuracy and measured phone latency) followed by NetAdapt, which
shrinks one layer's width at a time where accuracy drops least per millisecond saved.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

from ..core.errors import MobileNetsError
from ..core.figures import new_figure, save_figure
from ..deploy.bench import contenders, time_runs
from ..deploy.fuse import prepare_for_inference
from ..models.mobilenet import FAMILY_WIDTHS, check_resolution, create_model, model_defaults
from ..models.profile import profile
from ..models.weights import load_weights

DEFAULT_RESOLUTIONS = (96, 128, 160, 192, 224)
BUDGET_KEYS = {  # budget name → (row field, unit shown, scale from the field to that unit)
    "max_latency_ms": ("latency_ms", "ms", 1.0),
    "max_madds": ("madds", "MAdds", 1.0),
    "max_params": ("params", "params", 1.0),
    # V2 §5.1 / Table 3: the largest tensor inference must hold when expansions are computed in
    # channel splits, 16-bit activations (V2 1.0 at 224: 400K); the papers' memory figure.
    "max_memory_kb": ("memory_table3_bytes_fp16", "KB", 1e-3),
}


def accuracy_inversions(table: dict) -> list[tuple]:
    """Pairs (cheaper, dearer) of keys of a {key: (MAdds, top-1)} table where the model with
    fewer MAdds has the higher top-1, cheapest first."""
    items = sorted(table.items(), key=lambda kv: kv[1])
    return [(a, b) for i, (a, (madds_a, top1_a)) in enumerate(items)
            for b, (madds_b, top1_b) in items[i + 1:] if madds_a < madds_b and top1_a > top1_b]


def family_widths(family: str) -> tuple[float, ...]:
    if family not in FAMILY_WIDTHS:
        raise MobileNetsError(f"unknown family {family!r}; known: {', '.join(FAMILY_WIDTHS)}")
    return FAMILY_WIDTHS[family]


def _grid(family: str, widths, resolutions) -> tuple[list[float], list[int]]:
    family_widths(family)
    widths = list(family_widths(family) if widths is None else widths)
    resolutions = list(DEFAULT_RESOLUTIONS if resolutions is None else resolutions)
    if not widths or not resolutions:
        raise MobileNetsError(f"empty grid ({len(widths)} widths × {len(resolutions)} resolutions); "
                              "give at least one --widths and one --resolutions value")
    return widths, resolutions


@contextlib.contextmanager
def intra_op_threads(threads: int | None):
    """Run with `threads` PyTorch intra-op threads (None: leave the setting alone).

    On a machine shared with other busy processes, every multi-threaded op waits for its
    slowest thread to be scheduled: on this 2-core machine under load, MobileNetV2 0.35 at
    96 px took 2 ms with one thread and 20–650 ms with two.
    """
    if threads is None:
        yield
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise MobileNetsError(f"threads={threads!r} is out of range; allowed: integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(model: torch.nn.Module, resolution: int, repeats: int = 20,
                    warmup: int = 3, in_chans: int | None = None, threads: int | None = None) -> float:
    """Median milliseconds of one fp32 eager forward pass of one image through the model's
    inference form (BN folded, channels_last; `deploy.fuse`)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise MobileNetsError(f"repeats={repeats!r} is out of range; allowed: integer >= 1")
    chans = in_chans or model.pretrained_cfg.get("in_chans", 3)
    model = prepare_for_inference(model)
    x = torch.randn(1, chans, resolution, resolution).contiguous(memory_format=torch.channels_last)
    times = []
    with intra_op_threads(threads), torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


DEPLOY_BACKENDS = ("onnxruntime", "int8")


def deployment_available() -> bool:
    """True when ONNX Runtime (the `deploy` extra) is installed; then int8 and ONNX Runtime
    latencies join the eager fp32 one."""
    return importlib.util.find_spec("onnxruntime") is not None


def deployment_latency(family: str, width: float, resolution: int, backends, repeats: int,
                       model_kwargs: dict | None = None, threads: int | None = None) -> dict:
    """{backend: median ms of one image} from bench's own contenders (the same
    export, int8 calibration and session settings `mobilenets bench` times)."""
    import tempfile

    model = create_model(family, width_mult=width, **(model_kwargs or {}))
    threads = threads or torch.get_num_threads()
    out = {}
    with tempfile.TemporaryDirectory(prefix="mobilenets-tradeoff-") as tmp:
        cands, info = contenders(model, list(backends), [], Path(tmp), threads,
                                       resolution=resolution, log=lambda *a, **k: None)
        x = torch.randn(1, *info["input_shape"])
        for c in cands:
            times = time_runs(c.make_call(x), repeats, 2, float("inf"))
            out[c.backend] = statistics.median(times) * 1e3
    return out


def checkpoint_accuracy(path) -> dict:
    """Family, width, resolution, top-1 and the other model options of a trained weights file.

    Accuracy is read from the file's metadata ("top1") or from the trainer's report.json beside
    it; the configuration from its metadata.
    """
    path = Path(path)
    _, meta = load_weights(path)
    top1 = meta.get("top1")
    report = path.parent / "report.json"
    if top1 is None and report.is_file():
        try:
            top1 = json.loads(report.read_text()).get("top1")
        except (json.JSONDecodeError, OSError, AttributeError):
            raise MobileNetsError(f"{report}: not a readable JSON report") from None
    if top1 is None:
        raise MobileNetsError(f"{path}: has no top1 in its metadata nor a report.json beside it; "
                              "evaluate it with `mobilenets eval` first")
    name = meta.get("model")
    if not name:
        raise MobileNetsError(f"{path}: has no 'model' in its metadata")
    kwargs = {**model_defaults(name), **meta.get("model_kwargs", {})}
    resolution = (meta.get("preprocessing") or {}).get("resolution", 224)
    return {"family": kwargs.pop("family", name), "width_mult": float(kwargs.pop("width_mult", 1.0)),
            "resolution": int(resolution), "top1": float(top1), "checkpoint": str(path),
            "model_kwargs": kwargs}


def tradeoff_grid(family: str, widths=None, resolutions=None, latency: bool = True,
                  repeats: int = 20, checkpoints=(), model_kwargs: dict | None = None,
                  progress=None, backends=None, threads: int | None = 1) -> list[dict]:
    """One row per (α, ρ): params, MAdds, analytic peak memory, latencies and accuracy.

    Rows: {"model", "width_mult", "resolution", "params", "params_without_bn", "madds",
    "peak_memory_bytes_fp32", "memory_table3_bytes_fp16", "latency_ms" (eager fp32, or None),
    "latency_ms_<backend>" for each deployment backend, "top1" (None without a checkpoint)}.
    backends: deployment backends to time besides eager fp32 (default: onnxruntime and int8
    when ONNX Runtime is installed, none otherwise). threads: intra-op threads while
    timing: one by default, as the papers time one image on one core (V2 Table 4: Pixel 1,
    single core); None leaves PyTorch's setting.
    """

    accs = [checkpoint_accuracy(c) for c in checkpoints]
    if accs:
        # Checkpoints fix the grid's model options (classes, channels, small input...): the
        # MAdds beside an accuracy must be those of the network that reached it.
        model_kwargs = _checkpoint_options(accs, family, model_kwargs or {})
        widths = widths if widths is not None else sorted({a["width_mult"] for a in accs})
        resolutions = resolutions if resolutions is not None else sorted({a["resolution"] for a in accs})
    widths, resolutions = _grid(family, widths, resolutions)
    accuracy = {}
    for acc in accs:
        accuracy[(acc["width_mult"], acc["resolution"])] = acc["top1"]
        if acc["width_mult"] not in widths:
            widths.append(acc["width_mult"])
        if acc["resolution"] not in resolutions:
            resolutions.append(acc["resolution"])
    if backends is None:
        backends = DEPLOY_BACKENDS if latency and deployment_available() else ()
    backends = list(backends)
    unknown = [b for b in backends if b not in DEPLOY_BACKENDS]
    if unknown:
        raise MobileNetsError(f"backend {unknown[0]!r} is not one of {', '.join(DEPLOY_BACKENDS)}")
    if backends and not deployment_available():
        raise MobileNetsError(f"backends {', '.join(backends)} need ONNX Runtime, which is not "
                              'installed (pip install -e ".[deploy]")')
    rows = []
    for w in sorted(widths):
        model = create_model(family, width_mult=w, **(model_kwargs or {}))
        for r in sorted(resolutions):
            check_resolution(model, r)
            p = profile(model, r)
            row = {"model": family, "width_mult": w, "resolution": r, "params": p["params"],
                   "params_without_bn": p["params_without_bn"], "madds": p["madds"],
                   "peak_memory_bytes_fp32": p["peak_memory_bytes_fp32"],
                   "memory_table3_bytes_fp16": p["memory_table3_bytes_fp16"],
                   "latency_ms": None, "top1": accuracy.get((w, r))}
            if latency:
                row["latency_ms"] = measure_latency(model, r, repeats, threads=threads)
                if backends:
                    for name, ms in deployment_latency(family, w, r, backends, repeats,
                                                       model_kwargs, threads).items():
                        row[f"latency_ms_{name}"] = ms
            rows.append(row)
            if progress:
                progress(row)
    return rows


def _checkpoint_options(accs: list[dict], family: str, given: dict) -> dict:
    defaults = model_defaults(family)
    options = accs[0]["model_kwargs"]
    for acc in accs:
        if acc["family"] != family:
            raise MobileNetsError(f"{acc['checkpoint']}: is a {acc['family']} checkpoint, not {family}")
        if acc["model_kwargs"] != options:
            raise MobileNetsError(f"{acc['checkpoint']}: was built with {acc['model_kwargs']}, "
                                  f"{accs[0]['checkpoint']} with {options}; compare like with like")
    for key, value in given.items():
        if options.get(key, defaults.get(key, False)) != value:
            raise MobileNetsError(f"{accs[0]['checkpoint']}: was built with {key}="
                                  f"{options.get(key, defaults.get(key, False))!r}, not {value!r}; "
                                  f"drop --{key.replace('_', '-')}")
    return {**options, **given}


def _score(row: dict, by_accuracy: bool) -> tuple:
    # Higher is better; ties go to the cheaper model.
    main = row["top1"] if by_accuracy else row["madds"]
    return (main, -row["madds"], -(row["latency_ms"] or 0.0))


def fit(family: str, budgets: dict, widths=None, resolutions=None, repeats: int = 20,
        checkpoints=(), alternatives: int = 4, model_kwargs: dict | None = None,
        progress=None, threads: int | None = 1) -> dict:
    """The best (α, ρ) of the grid within every budget, and the runner-ups.

    budgets: any of max_latency_ms, max_madds, max_params, max_memory_kb (V2 Table 3 memory,
    fp16, K = 1000 B, analytic). Ranked by MAdds (accuracy proxy), or by top-1 of the
    checkpoints given (then only their configurations compete). Latency is measured lazily, best
    candidate first, until the winner and its runner-ups are known. Returns the chosen row with
    "alternatives": [next best rows], "budgets" and "ranked_by"; if nothing fits, a one-line
    error names the constraint that excludes the smallest model and by how much.
    """

    budgets = {k: v for k, v in budgets.items() if v is not None}
    for key, value in budgets.items():
        if key not in BUDGET_KEYS:
            raise MobileNetsError(f"unknown budget {key!r}; known: {', '.join(BUDGET_KEYS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise MobileNetsError(f"{key}={value!r} is out of range; allowed: a number > 0")
    if not isinstance(alternatives, int) or alternatives < 0:
        raise MobileNetsError(f"alternatives={alternatives!r} is out of range; allowed: integer >= 0")
    by_accuracy = bool(checkpoints)
    rows = tradeoff_grid(family, widths, resolutions, latency=False, checkpoints=checkpoints,
                         model_kwargs=model_kwargs)
    pool = [r for r in rows if r["top1"] is not None] if by_accuracy else rows
    analytic = {k: v for k, v in budgets.items() if k != "max_latency_ms"}
    candidates = sorted((r for r in pool if all(_within(r, k, v) for k, v in analytic.items())),
                        key=lambda r: _score(r, by_accuracy), reverse=True)
    feasible = []
    for row in candidates:
        if len(feasible) > alternatives:
            break
        if "max_latency_ms" in budgets:
            model = create_model(family, width_mult=row["width_mult"], **(model_kwargs or {}))
            row["latency_ms"] = measure_latency(model, row["resolution"], repeats, threads=threads)
            if progress:
                progress(row)
            if not _within(row, "max_latency_ms", budgets["max_latency_ms"]):
                continue
        feasible.append(row)
    if not feasible:
        raise MobileNetsError(_nothing_fits(pool, budgets, family, repeats, model_kwargs, threads))
    best = dict(feasible[0])
    best["alternatives"] = feasible[1:]
    best["budgets"] = budgets
    best["ranked_by"] = "top1" if by_accuracy else "madds"
    return best


def _within(row: dict, key: str, limit: float) -> bool:
    field, _, scale = BUDGET_KEYS[key]
    value = row[field]
    return value is not None and value * scale <= limit


def _nothing_fits(rows, budgets, family, repeats, model_kwargs, threads) -> str:
    """Name the budget that excludes the smallest model (fewest MAdds) and by how much."""
    smallest = min(rows, key=lambda r: (r["madds"], r["params"]))
    if smallest["latency_ms"] is None and "max_latency_ms" in budgets:
        model = create_model(family, width_mult=smallest["width_mult"], **(model_kwargs or {}))
        smallest = {**smallest, "latency_ms": measure_latency(model, smallest["resolution"], repeats,
                                                              threads=threads)}
    excess = []
    for key, limit in budgets.items():
        field, unit, scale = BUDGET_KEYS[key]
        value = smallest[field] * scale
        if value > limit:
            excess.append((value / limit, key, value, unit, limit))
    name = f"{family} α={smallest['width_mult']:g} at {smallest['resolution']} px"
    if not excess:  # only reachable when ranking by accuracy leaves nothing (no checkpoints fit)
        return f"no checkpoint's configuration fits the budget; the smallest, {name}, does"
    ratio, key, value, unit, limit = max(excess)
    flag = "--" + key.replace("_", "-")
    return (f"nothing fits: the smallest model, {name}, needs {value:,.4g} {unit} "
            f"but {flag} is {limit:,.4g} ({ratio:.2f}× over)")


def _label_log_axis(axis, text) -> None:
    """Plain numbers on a log axis, at 1, 2, 3 and 5 of each decade (matplotlib's default is 10^x)."""
    import math

    from matplotlib.ticker import FuncFormatter

    def label(v, _):
        if v <= 0:
            return ""
        lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6)
        return text(v) if lead in (1, 2, 3, 5) else ""
    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def plot_tradeoff(rows: list[dict], path) -> None:
    """MAdds (log scale) against top-1 where known, else against measured latency / params, one
    line per width like the papers' MAdds-vs-accuracy figures."""
    has_acc = any(r["top1"] is not None for r in rows)
    has_latency = any(r["latency_ms"] is not None for r in rows)
    y_key, y_label = (("top1", "top-1 accuracy") if has_acc else
                      ("latency_ms", "latency, ms (fp32 eager, batch 1)") if has_latency else
                      ("params", "parameters"))
    fig = new_figure((6.4, 4.4))
    ax = fig.subplots()
    for w in sorted({r["width_mult"] for r in rows}):
        pts = sorted((r["madds"], r[y_key], r["resolution"]) for r in rows
                     if r["width_mult"] == w and r[y_key] is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"α = {w:g}")
        for m, y, res in pts:
            ax.annotate(str(res), (m, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    _label_log_axis(ax.xaxis, lambda v: f"{v / 1e6:g}M")
    if y_key != "top1":
        ax.set_yscale("log")
        _label_log_axis(ax.yaxis, (lambda v: f"{v:g}") if y_key == "latency_ms" else
                        (lambda v: f"{v / 1e6:g}M"))
    ax.set_xlabel("multiply-adds (log scale); labels: input resolution")
    ax.set_ylabel(y_label)
    ax.set_title(f"{rows[0]['model']}: width multiplier α × resolution ρ")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
