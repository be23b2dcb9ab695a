"""Peak activation memory and latency of MobileNetV2 1.0 @224 with and without split inverted
residual execution (V2 §5.1), beside the profiler's analytic figures and the paper's Table 3.

    python benchmarks/memory_efficient.py --out benchmarks/results/memory_efficient.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mobilenets  # noqa: E402
from mobilenets.deploy.fuse import prepare_for_inference  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.deploy.memory_efficient import measured_peak_bytes, memory_efficient  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402

PAPER_TABLE3_V2_BYTES = 400_000   # V2 Table 3: max memory at any point, 16-bit floats, in KB


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/memory_efficient.json")
    args = ap.parse_args()
    tune_allocator()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    model = mobilenets.create_model(args.model).eval()
    prof = mobilenets.profile(model, args.resolution)
    x = torch.randn(1, 3, args.resolution, args.resolution).contiguous(memory_format=torch.channels_last)

    def latencies(models) -> list[float]:
        """Median ms of each model, timed round-robin so that the shared machine's load
        fluctuations fall on all of them alike."""
        times = [[] for _ in models]
        with torch.inference_mode():
            for m in models:
                m(x), m(x)
            for _ in range(args.repeats):
                for t, m in zip(times, models):
                    start = time.perf_counter()
                    m(x)
                    t.append(time.perf_counter() - start)
        return [statistics.median(t) * 1e3 for t in times]

    # Latency first: once torch.profiler has run, its allocation hooks slow later calls.
    variants = [(None, prepare_for_inference(model))] + [(k, memory_efficient(model, k)) for k in args.splits]
    rows = [dict(splits=k, median_ms=ms) for (k, _), ms in zip(variants, latencies([m for _, m in variants]))]
    for row, (k, m) in zip(rows, variants):
        row["peak_bytes_fp32"] = measured_peak_bytes(m, x)
        print(f"splits={k}: {row['peak_bytes_fp32'] / 1e6:.2f} MB, {row['median_ms']:.2f} ms", flush=True)
    result = dict(model=args.model, resolution=args.resolution, batch=1,
                  load_average=os.getloadavg(),
                  analytic_eager_peak_bytes_fp32=prof["peak_memory_bytes_fp32"],
                  analytic_table3_bytes_fp16=prof["memory_table3_bytes_fp16"],
                  paper_table3_bytes_fp16=PAPER_TABLE3_V2_BYTES, measured=rows)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
