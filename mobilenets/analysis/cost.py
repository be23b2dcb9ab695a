"""What a convolution costs, by the MobileNetV1 formulas (§3.1), and where a whole model spends
its multiply-adds and parameters (V1 Table 2).

Layer costs follow the paper's notation: a D_K×D_K kernel, M input and N output channels on a
D_F×D_F output map (stride 1, "same" padding, no biases: the papers count weights).
"""
from __future__ import annotations

from collections import defaultdict

from ..core.errors import MobileNetsError
from ..models.profile import profile

# V1 Table 2 rows in the paper's order: the profiler kind each gathers and its row name (the
# kernel sizes found in the model are appended, e.g. "Conv DW 3×3, 5×5" for V3).
TABLE2_ROWS = (("pointwise", "Conv"), ("depthwise", "Conv DW"), ("conv", "Conv"),
               ("fc", "Fully Connected"))
# MobileNets (Howard et al. 2017), Table 2: % of multiply-adds, % of parameters.
TABLE2_PAPER = {"pointwise": (94.86, 74.59), "depthwise": (3.06, 1.06),
                "conv": (1.19, 0.02), "fc": (0.18, 24.33)}


def _check_int(name: str, value, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise MobileNetsError(f"{name}={value!r} is out of range; allowed: integer >= {low}")
    return value


def _row(name: str, params: int, madds: int) -> dict:
    return {"name": name, "params": params, "madds": madds}


DEFAULT_GROUPS = (2, 4, 8)


def layer_costs(in_ch: int, out_ch: int, kernel: int, size: int, groups=None) -> dict:
    """Standard vs depthwise separable convolution of one layer, plus the other factorizations.

    Returns {"shape", "standard", "separable", "depthwise", "pointwise", "ratio",
    "formula_ratio", "rows"}; "rows" adds spatially separable (D_K×1 then 1×D_K, both full)
    and grouped convolution for each group count (default: those of 2, 4, 8 that divide both
    channel counts), each with its ratio to standard.
    """
    m = _check_int("in", in_ch)
    n = _check_int("out", out_ch)
    k = _check_int("kernel", kernel)
    f = _check_int("size", size)
    if k > f:
        raise MobileNetsError(f"kernel={k} is larger than the {f}×{f} feature map; allowed: kernel <= size")
    if groups is None:
        groups = [g for g in DEFAULT_GROUPS if m % g == 0 and n % g == 0]
    groups = [_check_int("groups", g) for g in groups]
    for g in groups:
        if m % g or n % g:
            raise MobileNetsError(f"groups={g} does not divide in={m} and out={n}; "
                                  "allowed: a common divisor of both")
    area = f * f
    standard = _row("standard", k * k * m * n, k * k * m * n * area)
    depthwise = _row("depthwise", k * k * m, k * k * m * area)
    pointwise = _row("pointwise", m * n, m * n * area)
    separable = _row("depthwise separable", depthwise["params"] + pointwise["params"],
                     depthwise["madds"] + pointwise["madds"])
    # Factorizing the kernel spatially: D_K×1 from M to N channels, then 1×D_K from N to N.
    spatial = _row(f"spatially separable ({k}×1, 1×{k})", k * m * n + k * n * n,
                   (k * m * n + k * n * n) * area)
    grouped = [_row(f"grouped (g={g})", k * k * m * n // g, k * k * m * n // g * area)
               for g in groups]
    rows = [standard, separable, depthwise, pointwise, spatial, *grouped]
    for r in rows:
        r["ratio"] = r["madds"] / standard["madds"]
    return {
        "shape": {"in": m, "out": n, "kernel": k, "size": f},
        "standard": {"params": standard["params"], "madds": standard["madds"]},
        "separable": {"params": separable["params"], "madds": separable["madds"]},
        "depthwise": {"params": depthwise["params"], "madds": depthwise["madds"]},
        "pointwise": {"params": pointwise["params"], "madds": pointwise["madds"]},
        "ratio": separable["madds"] / standard["madds"],
        "formula_ratio": 1 / n + 1 / (k * k),
        "rows": rows,
    }


def weight_count(layer: dict) -> int:
    """Weights of one profiled conv / linear layer, without its bias, as the papers count."""
    if layer["kind"] == "attention":   # V4's Q·Kᵀ and attention·V products: no weights
        return 0
    if layer["kind"] == "fc":
        return layer["input_shape"][-1] * layer["output_shape"][-1]
    kh, kw = layer["kernel"]
    return layer["output_shape"][0] * layer["input_shape"][0] // layer["groups"] * kh * kw


def breakdown(model, resolution: int = 224) -> dict:
    """V1 Table 2 for any model: share of multiply-adds and of weights per layer kind.

    Kinds come from the profiler (pointwise 1×1, depthwise, full conv, fc; grouped and SE
    layers fall under their kind too). Weights exclude biases and batch norm, which is what
    reproduces the paper's parameter column: with the classifier's 1,000 biases counted, fc
    becomes 24.35% and 1×1 conv 74.57%.
    Returns {"model", "resolution", "madds", "params", "rows": [{"kind", "name", "madds",
    "params", "madds_pct", "params_pct"}]}.
    """
    report = profile(model, resolution)
    madds, params, kernels = defaultdict(int), defaultdict(int), defaultdict(set)
    for layer in report["layers"]:
        madds[layer["kind"]] += layer["madds"]
        params[layer["kind"]] += weight_count(layer)
        if layer["kind"] not in ("fc", "attention"):
            kernels[layer["kind"]].add(tuple(layer["kernel"]))
    total_m, total_p = sum(madds.values()), sum(params.values())
    names = {**dict(TABLE2_ROWS), "attention": "Attention Q·Kᵀ, attention·V"}
    order = [kind for kind, _ in TABLE2_ROWS] + sorted(set(madds) - set(dict(TABLE2_ROWS)))
    rows = []
    for kind in (k for k in order if k in madds):
        sizes = ", ".join(f"{h}×{w}" for h, w in sorted(kernels[kind]))
        rows.append({"kind": kind, "name": " ".join(filter(None, [names.get(kind, f"Conv {kind}"), sizes])),
                     "madds": madds[kind], "params": params[kind],
                     "madds_pct": 100 * madds[kind] / total_m, "params_pct": 100 * params[kind] / total_p})
    return {"model": report["model"], "resolution": resolution, "madds": total_m,
            "params": total_p, "rows": rows}
