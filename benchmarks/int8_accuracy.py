"""int8 accuracy of trained Fashion-MNIST models on every int8 engine: the fp32 model and each
engine's int8 file scored on the 10,000 test images, the int8 file on its own engine (ONNX
Runtime QDQ, OpenVINO by NNCF, ExecuTorch/XNNPACK), each calibrated on the same 512 training
images. The target: every int8 file within 0.5 points of its fp32 model.

    python benchmarks/int8_accuracy.py [--checkpoints A.safetensors,B.safetensors]
        [--engines onnxruntime,openvino,executorch] [--out benchmarks/results/int8_accuracy.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402
from mobilenets.deploy.openvino import quantize_openvino_checkpoint  # noqa: E402
from mobilenets.deploy.quantize import quantize_checkpoint, quantize_pte_checkpoint  # noqa: E402
from mobilenets.models.mobilenet import load_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = tuple(RESULTS / "accuracy" / f"{name}.safetensors"
                    for name in ("fashion-mnist", "fashion-mnist-best", "fashion-mnist-v3-small-3ep"))
QUANTIZERS = {"onnxruntime": (quantize_checkpoint, ".onnx"), "openvino": (quantize_openvino_checkpoint, ".onnx"),
              "executorch": (quantize_pte_checkpoint, ".pte")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default=",".join(str(c.relative_to(ROOT)) for c in CHECKPOINTS))
    p.add_argument("--engines", default=",".join(QUANTIZERS), help=f"comma-separated, from {','.join(QUANTIZERS)}")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--out", default=str(RESULTS / "int8_accuracy.json"))
    args = p.parse_args(argv)
    engines = args.engines.split(",")
    if set(engines) - set(QUANTIZERS):
        p.error(f"--engines {args.engines}: allowed: {', '.join(QUANTIZERS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-accuracy-") as d:
        for ckpt in args.checkpoints.split(","):
            for engine in engines:
                model, meta = load_model(ckpt)
                quantize, suffix = QUANTIZERS[engine]
                started = time.perf_counter()
                s = quantize(model, meta, Path(d) / f"{Path(ckpt).stem}.{engine}{suffix}", "fashion-mnist",
                             calib_size=args.calib_size, eval_size=10000)
                row = {"checkpoint": ckpt, "model": meta["model"], "model_kwargs": meta.get("model_kwargs"),
                       "engine": engine, "calibration_images": s["calibration_images"],
                       "test_images": s["eval_images"], "top1_fp32": round(s["top1_fp32"], 2),
                       "top1_int8": round(s["top1_int8"], 2),
                       "drop_points": round(s["top1_fp32"] - s["top1_int8"], 2),
                       "seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(f"{Path(ckpt).name:34s} {engine:12s} fp32 {row['top1_fp32']:.2f}%  int8 {row['top1_int8']:.2f}%  "
                      f"drop {row['drop_points']:+.2f}", flush=True)
    given = sys.argv[1:] if argv is None else argv
    result = {"benchmark": "int8_accuracy", "command": " ".join(["python benchmarks/int8_accuracy.py", *given]),
              "machine": describe_machine(), "target": "int8 within 0.5 points of fp32", "rows": rows}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
