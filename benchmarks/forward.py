"""Eager fp32 inference speed of our MobileNetV2 / V3-Large beside torchvision's and timm's.

Every contender runs in the same process with the same settings, interleaved round by round so
that machine drift hits all alike. The allocator setting (mobilenets.runtime) is process-wide, so
each setting gets its own child process: "default" (glibc as it comes) and "tuned".

    python benchmarks/forward.py                       # table + benchmarks/results/forward.json
    python benchmarks/forward.py --rounds 5 --md docs/forward_table.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = {
    "mobilenet_v2": {"mobilenets": "mobilenet_v2", "torchvision": "mobilenet_v2",
                     "timm": "mobilenetv2_100"},
    "mobilenet_v3_large": {"mobilenets": "mobilenet_v3_large", "torchvision": "mobilenet_v3_large",
                           "timm": "mobilenetv3_large_100"},
}


def build(library: str, name: str):
    import torch
    torch.manual_seed(0)
    if library == "mobilenets":
        import mobilenets
        # The inference form: batch norm folded into the convolutions (eval mode runs BN as is).
        return mobilenets.fuse(mobilenets.create_model(name), channels_last=False)
    if library == "torchvision":
        import torchvision
        return getattr(torchvision.models, name)()
    import timm
    return timm.create_model(name)


def child(args) -> list[dict]:
    """Time every contender in this process; the allocator setting was chosen by the parent."""
    import torch
    sys.path.insert(0, str(ROOT))
    from mobilenets.core.runtime import tune_allocator
    tuned = tune_allocator() if args.setting == "tuned" else False
    torch.set_num_threads(args.threads)
    cases = []
    for arch, libs in CONTENDERS.items():
        for library, name in libs.items():
            model = build(library, name).eval()
            for cl in (False, True):
                m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                for batch in args.batch:
                    x = torch.randn(batch, 3, 224, 224)
                    if cl:
                        x = x.to(memory_format=torch.channels_last)
                    cases.append(dict(arch=arch, library=library, batch=batch, channels_last=cl,
                                      model=m, x=x, times=[]))
    with torch.inference_mode():
        for case in cases:                       # warm-up: first-touch and oneDNN primitives
            for _ in range(2):
                case["model"](case["x"])
        for _ in range(args.rounds):
            for case in cases:
                n = max(1, args.iters // case["batch"]) if case["batch"] > 1 else args.iters
                t = time.perf_counter()
                for _ in range(n):
                    case["model"](case["x"])
                case["times"].append((time.perf_counter() - t) / n * 1000)
    return [dict(setting=args.setting, allocator_tuned=tuned, arch=c["arch"], library=c["library"],
                 batch=c["batch"], channels_last=c["channels_last"],
                 median_ms=statistics.median(c["times"]), min_ms=min(c["times"]))
            for c in cases]


def table(rows: list[dict]) -> str:
    keys = sorted({(r["setting"], r["arch"], r["batch"], r["channels_last"]) for r in rows},
                  key=lambda k: (k[0], k[1], k[2], k[3]))
    libs = ["mobilenets", "torchvision", "timm"]
    out = ["| setting | model | batch | layout | " + " | ".join(f"{lib} ms" for lib in libs)
           + " | ours vs fastest peer |", "|---|---|---|---|" + "---|" * (len(libs) + 1)]
    for setting, arch, batch, cl in keys:
        ms = {r["library"]: r["median_ms"] for r in rows if (r["setting"], r["arch"], r["batch"],
                                                               r["channels_last"]) == (setting, arch, batch, cl)}
        peer = min(ms[lib] for lib in libs[1:] if lib in ms)
        out.append(f"| {setting} | {arch} | {batch} | {'NHWC' if cl else 'NCHW'} | "
                   + " | ".join(f"{ms.get(lib, float('nan')):.1f}" for lib in libs)
                   + f" | {peer / ms['mobilenets']:.2f}× |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="images per timing (batch 1: calls)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--settings", nargs="+", default=["default", "tuned"])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "forward.json"))
    p.add_argument("--md", default=None, help="also write the markdown table here")
    p.add_argument("--setting", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.setting:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for setting in args.settings:
        # create_model applies the tuning itself, so the default setting must switch it off.
        env = {**os.environ, "MOBILENETS_MALLOC_TUNING": "1" if setting == "tuned" else "0"}
        for var in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE"):
            env.pop(var, None)
        cmd = [sys.executable, __file__, "--setting", setting, "--rounds", str(args.rounds),
               "--iters", str(args.iters), "--threads", str(args.threads),
               "--batch", *map(str, args.batch)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    import torch
    result = dict(date=datetime.date.today().isoformat(), machine=platform.processor() or
                  platform.machine(), cpus=os.cpu_count(), threads=args.threads,
                  torch=torch.__version__, rows=rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    md = table(rows)
    print(md)
    if args.md:
        Path(args.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
