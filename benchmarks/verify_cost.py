"""What the checksum check costs: for each file format `export` writes, the time `mobilenets
verify` takes to hash a file against the time `Predictor` takes to open it (which includes the
same check), on the largest network the library exports for a CPU (V3-Large 1.0 at 224 px,
random weights; V2 1.0 beside it).

    python benchmarks/verify_cost.py [--models mobilenet_v3_large,mobilenet_v2]
        [--formats onnx,pt2,torchscript,executorch]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilenets import create_model  # noqa: E402
from mobilenets.cli import main as cli  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402
from mobilenets.deploy.predict import Predictor  # noqa: E402
from mobilenets.deploy.verify import verify_file  # noqa: E402
from mobilenets.models.weights import save_weights  # noqa: E402

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".ts", "executorch": ".pte", "tflite": ".tflite"}


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v3_large,mobilenet_v2")
    ap.add_argument("--formats", default="onnx,pt2,torchscript,executorch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/verify_cost.json")
    args = ap.parse_args()
    machine = describe_machine(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            files = {}
            for fmt in args.formats.split(","):
                files[fmt] = Path(tmp) / f"{model}{SUFFIX[fmt]}"
                if cli(["export", model, "--format", fmt, "--out", str(files[fmt]), "--no-check"]) != 0:
                    raise SystemExit(f"export of {model} to {fmt} failed")
            files["safetensors"] = Path(tmp) / f"{model}.safetensors"
            save_weights(files["safetensors"], create_model(model))
            for fmt, path in files.items():
                assert verify_file(path)["ok"], path
                verify_s = seconds(lambda: verify_file(path), args.repeats)
                load_s = seconds(lambda: Predictor(path), max(2, args.repeats // 2))
                rows.append({"model": model, "format": fmt, "megabytes": round(path.stat().st_size / 2**20, 2),
                             "verify_ms": round(verify_s * 1e3, 2), "load_ms": round(load_s * 1e3, 1),
                             "verify_share_of_load": round(verify_s / load_s, 4)})
                r = rows[-1]
                print(f"{model:20s} {fmt:12s} {r['megabytes']:7.2f} MB  verify {r['verify_ms']:8.2f} ms  "
                      f"load {r['load_ms']:8.1f} ms  share {r['verify_share_of_load']:6.1%}", flush=True)
    doc = {"command": "python benchmarks/verify_cost.py " + " ".join(sys.argv[1:]), "machine": machine,
           "machine_after": describe_machine(1), "rows": rows}
    atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
