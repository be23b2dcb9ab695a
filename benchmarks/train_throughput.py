"""Training throughput (images/s) of our MobileNetV2 and torchvision's in the same training step.

Both models get the same process settings (mobilenets.runtime.tune_allocator, thread count),
the same batch, channels_last, the same optimizer (SGD, Nesterov momentum) and loss, and the
same step function (`mobilenets.train.train_step`). Rounds alternate between the contenders so
that load from other processes falls on both alike; the median round counts.

    python benchmarks/train_throughput.py [--resolution 224] [--batch 32] [--rounds 5]
        [--steps 3] [--profile] [--out benchmarks/results/train_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from mobilenets import create_model  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.runtime import allocator_tuned, tune_allocator  # noqa: E402
from mobilenets.train import train_step  # noqa: E402


def contenders(num_classes: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = create_model("mobilenet_v2", num_classes=num_classes)
    theirs = torchvision.models.mobilenet_v2(num_classes=num_classes)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs, (n_ours, n_theirs)  # the same network, or the race means nothing
    return {"mobilenets mobilenet_v2": ours, "torchvision mobilenet_v2": theirs}


def setup(model: nn.Module, batch: int, resolution: int, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)
    x = torch.randn(batch, 3, resolution, resolution).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,))
    return model, opt, x, y


def time_steps(model, opt, x, y, criterion, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, criterion, opt)
    return steps * len(x) / (time.perf_counter() - t)


def profile_step(model, opt, x, y, criterion, top: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, x, y, criterion, opt)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--contiguous", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--profile", action="store_true", help="print each contender's top ops")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    args = p.parse_args(argv)
    tune_allocator()
    criterion = nn.CrossEntropyLoss()
    runs = {name: setup(m, args.batch, args.resolution, not args.contiguous)
            for name, m in contenders(1000).items()}
    for name, (m, opt, x, y) in runs.items():  # warm-up: first-touch allocations, kernel choice
        time_steps(m, opt, x, y, criterion, 1)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (m, opt, x, y) in runs.items():
            rates[name].append(time_steps(m, opt, x, y, criterion, args.steps))
    median = {name: statistics.median(r) for name, r in rates.items()}
    ours, theirs = median["mobilenets mobilenet_v2"], median["torchvision mobilenet_v2"]
    print(f"training throughput, batch {args.batch}, {args.resolution} px, "
          f"{'NCHW' if args.contiguous else 'channels_last'}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps (median)")
    print(f"{'model':28s} {'img/s':>8s} {'min':>8s} {'max':>8s}")
    for name, r in rates.items():
        print(f"{name:28s} {median[name]:8.2f} {min(r):8.2f} {max(r):8.2f}")
    print(f"ratio ours / torchvision: {ours / theirs:.3f}")
    if args.profile:
        for name, (m, opt, x, y) in runs.items():
            print(f"\n{name}: one step, ops by self CPU time\n{profile_step(m, opt, x, y, criterion)}")
    result = {"benchmark": "train_throughput", "batch": args.batch, "resolution": args.resolution,
              "channels_last": not args.contiguous, "threads": torch.get_num_threads(),
              "rounds": args.rounds, "steps_per_round": args.steps, "img_per_s": median,
              "all_rounds": rates, "ratio": ours / theirs, "allocator_tuned": allocator_tuned(),
              "torch": torch.__version__, "torchvision": torchvision.__version__,
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg()}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
