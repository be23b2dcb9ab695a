"""`mobilenets bench` for MobileNetV2 1.0, V3-Large 1.0 and V1 1.0 at 224 px: every backend and
the torchvision peers, one JSON file with the machine description and all rows.

    python benchmarks/deploy.py --out benchmarks/results/deploy.json

The machine is shared: the load average at the end of each model's run is recorded with it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilenets.deploy.bench import BACKENDS, format_table, run_bench  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/deploy.json")
    args = ap.parse_args()
    results = []
    for name in args.models:
        rows, machine = run_bench(name, tuple(args.batch), args.backends.split(","),
                                  ["torchvision"], repeats=args.repeats,
                                  log=lambda *a: print(*a, file=sys.stderr, flush=True))
        print(f"\n## {name}\n{format_table(rows, machine)}", flush=True)
        results.append({"model": name, "machine": machine, "rows": rows})
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
