"""V3 §5.3 "Redesigning expensive layers", measured on the model options that rebuild them.

- The efficient last stage (the published one) against the original it replaced
  (`last_stage="original"`, tables.V3_LARGE_ORIGINAL_LAST_BLOCK). The paper: dropping the
  original's depthwise and projection layers and moving the 1280-wide layer after pooling saves
  7 ms (11 % of the running time, Pixel phone) and 30 M multiply-adds with almost no loss of
  accuracy.
- Where h-swish starts (`hswish_from`), the arms of V3 Table 5: the published network (h-swish in
  the second half, as the NL column says), h-swish everywhere ("@16": from the first layer of
  16 channels), h-swish from the first 112-channel layer ("@112") and ReLU everywhere.

Each variant gets its analytic parameters and multiply-adds (`models.profile`) and, unless
turned off, its eager CPU latency: batch 1, one thread, BN folded, channels_last, the variants
taking turns round by round (as `deploy.bench.run_bench` times its contenders) and the median of
every timed call.
"""
from __future__ import annotations

import statistics

import torch

from ..core.errors import MobileNetsError
from ..core.figures import new_figure, save_figure
from ..deploy.bench import ROUNDS, time_in_turns, time_runs
from ..deploy.fuse import prepare_for_inference
from ..models.mobilenet import create_model
from ..models.profile import profile
from ..models.tables import V3_LARGE_BLOCKS, V3_LARGE_STEM, V3_SMALL_BLOCKS, V3_SMALL_STEM

FAMILIES = {"mobilenet_v3_large": (V3_LARGE_STEM, V3_LARGE_BLOCKS),
            "mobilenet_v3_small": (V3_SMALL_STEM, V3_SMALL_BLOCKS)}
PAPER = {"madds_saved": 30e6, "latency_saved_ms": 7.0, "latency_saved_fraction": 0.11,
         "device": "Pixel phone, one large core, TFLite",
         "table5": "h-swish @N: N is the number of channels of the first layer with h-swish"}


def first_layer_of_width(family: str, channels: int) -> int:
    """Index into [stem, bneck rows] of the first layer whose table width is `channels` (the
    "@N" of V3 Table 5), as `hswish_from` takes it."""
    stem, rows = FAMILIES[family]
    widths = [stem] + [row[2] for row in rows]
    if channels not in widths:
        raise MobileNetsError(f"no layer of {family}'s table is {channels} channels wide; "
                              f"widths: {sorted(set(widths))}")
    return widths.index(channels)


def variants(family: str) -> list[tuple[str, dict]]:
    """(label, model options): the published network first, the comparisons after it."""
    if family not in FAMILIES:
        raise MobileNetsError(f"--family {family!r}: allowed: {', '.join(FAMILIES)}")
    rows = len(FAMILIES[family][1])
    out = [("published (efficient last stage, h-swish in the second half)", {})]
    large = family == "mobilenet_v3_large"
    if large:   # the paper describes the original stage and Table 5 for V3-Large only
        out.append(("original last stage", {"last_stage": "original"}))
    out.append(("h-swish everywhere (@16)", {"hswish_from": 0}))
    if large:
        out.append(("h-swish from the 112-channel layers (@112)",
                    {"hswish_from": first_layer_of_width(family, 112)}))
    out.append(("ReLU everywhere", {"hswish_from": rows + 2}))
    return out


def _timed_calls(models, resolution: int, threads: int, repeats: int, budget_s: float) -> list[float]:
    """Median seconds per image of each model, taking turns round by round."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
        fused = [prepare_for_inference(m) for m in models]

        def call_of(module):
            def call():
                with torch.inference_mode():
                    module(x)
            return call
        calls = [call_of(m) for m in fused]
        for call in calls:
            time_runs(call, 0, 3, 0)
        return [statistics.median(t) for t in time_in_turns(calls, repeats, budget_s)]
    finally:
        torch.set_num_threads(saved)


def last_stage_study(family: str = "mobilenet_v3_large", width_mult: float = 1.0,
                     resolution: int = 224, latency: bool = True, threads: int = 1,
                     repeats: int = 50, budget_s: float = 30.0) -> dict:
    """Params, MAdds and (optionally) latency of every variant; deltas against the published."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise MobileNetsError(f"repeats={repeats!r} is out of range; allowed: integer >= 1")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise MobileNetsError(f"threads={threads!r} is out of range; allowed: integer >= 1")
    arms = variants(family)
    models = [create_model(family, width_mult=width_mult, **opts).eval() for _, opts in arms]
    rows = []
    for (label, opts), model in zip(arms, models):
        p = profile(model, resolution)
        rows.append({"label": label, "options": opts, "params": p["params"], "madds": p["madds"]})
    if latency:
        for row, seconds in zip(rows, _timed_calls(models, resolution, threads, repeats, budget_s)):
            row["latency_ms"] = seconds * 1e3
    base = rows[0]
    for row in rows:
        row["madds_vs_published"] = row["madds"] - base["madds"]
        row["params_vs_published"] = row["params"] - base["params"]
        if latency:
            row["latency_ms_vs_published"] = row["latency_ms"] - base["latency_ms"]
    out = {"family": family, "width_mult": width_mult, "resolution": resolution, "batch": 1,
           "threads": threads, "latency": "eager fp32, BN folded, channels_last, median of "
           f"{repeats} calls in {min(ROUNDS, repeats)} interleaved rounds" if latency else None,
           "paper": PAPER, "variants": rows}
    original = next((r for r in rows if r["options"].get("last_stage") == "original"), None)
    if original is not None:
        out["last_stage"] = {
            "madds_saved": original["madds"] - base["madds"],
            "madds_saved_minus_paper": original["madds"] - base["madds"] - PAPER["madds_saved"],
            "params_saved": original["params"] - base["params"],
            **({"latency_saved_ms": original["latency_ms"] - base["latency_ms"],
                "latency_saved_fraction": 1 - base["latency_ms"] / original["latency_ms"]}
               if latency else {})}
    return out


def plot_last_stage(result: dict, path) -> None:
    """MAdds and, when timed, latency of each variant."""
    rows = result["variants"]
    timed = all("latency_ms" in r for r in rows)
    fig = new_figure((9.0 if timed else 5.0, 3.6))
    axes = fig.subplots(1, 2 if timed else 1, squeeze=False)[0]
    labels = [r["label"].split(" (")[0] for r in rows]
    axes[0].barh(labels, [r["madds"] / 1e6 for r in rows], color="tab:blue")
    axes[0].set_xlabel("MAdds (M)")
    if timed:
        axes[1].barh(labels, [r["latency_ms"] for r in rows], color="tab:orange")
        axes[1].set_xlabel(f"latency, batch 1, {result['threads']} thread(s) (ms)")
        axes[1].set_yticklabels([])
    for ax in axes:
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"{result['family']} α {result['width_mult']:g} at {result['resolution']} px", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
