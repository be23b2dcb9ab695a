"""Training throughput of a classification recipe's model across batch sizes, beside a large SGEMM
timed in the same run, and where a step's time goes at each batch size.

The step is the trainer's own (`mobilenets.train.train_step`) with the recipe's model, optimizer
and loss, on random input of the recipe's resolution and channels; no data loading. Rounds
alternate between the batch sizes so that load from other processes falls on all alike; the
median round counts. Speed is also given as a share of the SGEMM rate: a training step does about
6 x multiply-adds FLOPs per image (forward, and twice that backward).

    python benchmarks/batch_throughput.py [--recipe fashion-mnist-best] [--batches 32,64,128]
        [--rounds 5] [--images 2048] [--nchw] [--compile] [--amp bf16]
        [--out benchmarks/results/batch_throughput.json]

`--amp bf16` runs the step under bfloat16 autocast, as `train --amp bf16` does: it pays where the
CPU has bfloat16 instructions (AVX512-BF16 or AMX; the JSON records the flags).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mobilenets import create_model  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine, sgemm_gflops  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402
from mobilenets.models.profile import profile  # noqa: E402
from mobilenets.train import train_step  # noqa: E402
from mobilenets.train.optim import build_optimizer  # noqa: E402
from mobilenets.train.recipes import DEFAULTS, load_recipe  # noqa: E402
from mobilenets.train.tasks import classifier_kwargs  # noqa: E402

# Op names by what they do in a MobileNet step; anything else is "other" (loss, optimizer,
# allocation). Self time only, so a wrapper op is not counted twice.
OP_KINDS = {
    "conv and linear forward": ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                            "aten::thnn_conv2d", "aten::_nnpack_spatial_convolution", "aten::addmm"),
    "conv and linear backward": ("aten::convolution_backward", "aten::mm"),
    "batch norm forward": ("aten::native_batch_norm", "aten::_native_batch_norm_legit"),
    "batch norm backward": ("aten::native_batch_norm_backward",),
    "activation forward": ("aten::hardtanh", "aten::hardtanh_", "aten::clamp", "aten::clamp_",
                           "aten::relu", "aten::relu_", "aten::hardswish", "aten::hardswish_",
                           "aten::hardsigmoid", "aten::clamp_min_"),
    "activation backward": ("aten::hardtanh_backward", "aten::threshold_backward",
                            "aten::hardswish_backward", "aten::hardsigmoid_backward"),
    "copies": ("aten::copy_",),
}


def op_kind(name: str) -> str:
    return next((kind for kind, names in OP_KINDS.items() if name in names), "other")


def recipe_model(recipe: dict, num_classes: int) -> tuple[nn.Module, dict]:
    cfg = {**DEFAULTS, **recipe}
    # As the trainer builds it: model_options first, the task's kwargs over them.
    kwargs = {**cfg["model_options"], **classifier_kwargs(cfg, num_classes, cfg["in_chans"] or 3)}
    return create_model(cfg["model"], **kwargs), cfg


def setup(recipe: dict, batch: int, channels_last: bool, compile_model: bool = False, num_classes: int = 10):
    """(model, what the step calls, optimizer, x, y) for one batch size."""
    torch.manual_seed(0)
    model, cfg = recipe_model(recipe, num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    res = cfg["resolution"] or 224
    x = torch.randn(batch, cfg["in_chans"] or 3, res, res)
    y = torch.randint(0, num_classes, (batch,))
    step_model = torch.compile(model) if compile_model else model
    return model, step_model, build_optimizer(model, cfg), x.contiguous(memory_format=fmt), y


def time_images(step, batch: int, images: int) -> float:
    steps = max(1, images // batch)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def step_split(step, steps: int = 3) -> dict[str, float]:
    """Share of a step's self CPU time by op kind (OP_KINDS), over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[op_kind(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {kind: round(totals[kind] / whole, 4) for kind in [*OP_KINDS, "other"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fashion-mnist-best", help="a classification recipe's name or JSON file")
    p.add_argument("--batches", default="32,64,128", help="comma-separated batch sizes")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=2048, help="images per batch size per round")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile the model, as `train --compile` does")
    p.add_argument("--amp", choices=("bf16",), default=None, help="bfloat16 autocast, as `train --amp bf16`")
    p.add_argument("--no-profile", action="store_true", help="skip the per-op split")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_throughput.json"))
    args = p.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches {args.batches}: expected comma-separated integers")
    if not batches or min(batches) < 1 or args.rounds < 1 or args.images < 1:
        p.error("--batches, --rounds and --images must be positive")
    recipe = load_recipe(args.recipe)
    if recipe.get("task") not in (None, "classification"):
        p.error(f"--recipe {args.recipe} is a {recipe['task']} recipe; this benchmark times classifiers")
    tune_allocator()
    machine = describe_machine()
    runs = {b: setup(recipe, b, not args.nchw, args.compile) for b in batches}
    cfg = {**DEFAULTS, **recipe}
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    steps = {b: (lambda m=m, o=o, x=x, y=y: train_step(m, x, y, criterion, o, amp_dtype=amp_dtype))
             for b, (_, m, o, x, y) in runs.items()}
    for b in batches:  # warm-up: first-touch allocations, kernel choice
        time_images(steps[b], b, 2 * b)
    rates: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            rates[b].append(time_images(steps[b], b, args.images))
    sgemm_after = sgemm_gflops()
    model, _, _, x, _ = runs[batches[0]]
    madds = profile(model, x.shape[-1])["madds"]
    sgemm = statistics.median([machine["sgemm_gflops"], sgemm_after])
    rows = []
    print(f"{args.recipe}: {cfg['model']} width {cfg['width_mult']}, {x.shape[-1]} px, {madds / 1e6:.1f}M MAdds, "
          f"{'NCHW' if args.nchw else 'channels_last'}{', compiled' if args.compile else ''}"
          f"{', bf16 autocast' if args.amp else ''}, "
          f"{torch.get_num_threads()} threads; "
          f"SGEMM {machine['sgemm_gflops']:.0f} before, {sgemm_after:.0f} GFLOP/s after")
    print(f"{'batch':>6s} {'img/s':>8s} {'min':>7s} {'max':>7s} {'% of SGEMM':>11s}")
    for b in batches:
        median = statistics.median(rates[b])
        share = 6 * madds * median / 1e9 / sgemm
        row = {"batch": b, "img_per_s": round(median, 1), "rounds": [round(r, 1) for r in rates[b]],
               "share_of_sgemm": round(share, 4)}
        if not args.no_profile:
            row["self_time_split"] = step_split(steps[b])
        rows.append(row)
        print(f"{b:6d} {median:8.1f} {min(rates[b]):7.1f} {max(rates[b]):7.1f} {100 * share:10.1f}%")
    if not args.no_profile:
        kinds = [*OP_KINDS, "other"]
        print("\nshare of a step's self CPU time by op kind")
        print(f"{'':22s}" + "".join(f"{b:>8d}" for b in batches))
        for kind in kinds:
            print(f"{kind:22s}" + "".join(f"{100 * r['self_time_split'][kind]:7.1f}%" for r in rows))
    result = {"benchmark": "batch_throughput", "recipe": args.recipe, "model": cfg["model"],
              "width_mult": cfg["width_mult"], "resolution": int(x.shape[-1]), "madds": madds,
              "channels_last": not args.nchw, "compiled": args.compile, "amp": args.amp, "rounds": args.rounds, "images_per_round": args.images,
              "machine": machine, "sgemm_gflops_after": round(sgemm_after, 1), "batches": rows}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
