"""Which ops stay outside ExecuTorch's XNNPACK delegate, per model, fp32 and int8.

Lowers each model the way `mobilenets export --format executorch` / `quantize --format
executorch` do (the export-path rewrites of `mobilenets.deploy.executorch.xnnpack_ready` included) and
records executorch's delegation info: delegated subgraphs, delegated nodes and the ops left to the
portable kernels. Random weights: delegation depends on the graph, not on the values (int8 is
calibrated on 8 unit-Gaussian images for the same reason). Nothing is timed.

    python benchmarks/mobile_delegation.py                 # classifiers and task models
    python benchmarks/mobile_delegation.py --models mobilenet_v3_small --no-int8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mobilenets import create_model  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.deploy.executorch import delegation_report  # noqa: E402

CLASSIFIERS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
TASKS = ("ssdlite_mobilenet_v2", "deeplabv3_mobilenet_v2", "lraspp_mobilenet_v3_large")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(CLASSIFIERS + TASKS))
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--resolution", type=int, default=None,
                    help="input size (default: the model's own)")
    ap.add_argument("--out", default="benchmarks/results/mobile_delegation.json")
    args = ap.parse_args()
    results = []
    for name in args.models:
        model = create_model(name).eval()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        res = args.resolution or int(cfg.get("resolution", 224))
        x = torch.randn(2, int(cfg.get("in_chans", 3)), res, res)
        entry = {"model": name, "resolution": res}
        for precision in ("fp32",) if args.no_int8 else ("fp32", "int8"):
            t = time.perf_counter()
            try:
                calib = torch.randn(8, *x.shape[1:]) if precision == "int8" else None
                entry[precision] = delegation_report(model, x, calib)
            except Exception as e:   # record the failure and go on with the next model
                entry[precision] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
            entry[precision]["seconds"] = round(time.perf_counter() - t, 1)
            print(f"{name} {precision}: {json.dumps(entry[precision])}", flush=True)
        results.append(entry)
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
