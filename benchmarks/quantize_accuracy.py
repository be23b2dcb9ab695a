"""int8 accuracy check on Fashion-MNIST: fp32 vs PTQ int8 vs QAT int8 on the 10,000 test images.

Without --checkpoint it first trains a small model briefly (mobilenet_v2 α 0.5 at
32 px with the standard strides, cheap enough for a shared 2-core machine) so that the check
runs on trained weights. Writes a JSON summary.

    python benchmarks/quantize_accuracy.py --out benchmarks/results/quantize_accuracy.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mobilenets  # noqa: E402
from mobilenets.datasets.calibration import FASHION_MNIST_CLASSES  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.deploy.qat import finetune  # noqa: E402
from mobilenets.deploy.quantize import quantize_checkpoint  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402
from mobilenets.models.mobilenet import load_model
from mobilenets.models.weights import save_weights  # noqa: E402

PRE = dict(resolution=32, resize=32, mean=[0.286], std=[0.353], in_chans=1, interpolation="bilinear")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--train-steps", type=int, default=250)
    ap.add_argument("--qat-steps", type=int, default=60)
    ap.add_argument("--workdir", default="/tmp/mobilenets-quantize-accuracy")
    ap.add_argument("--out", default="benchmarks/results/quantize_accuracy.json")
    args = ap.parse_args()
    tune_allocator()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.checkpoint:
        model, meta = load_model(args.checkpoint)
        ckpt = args.checkpoint
    else:
        model = mobilenets.create_model("mobilenet_v2", width_mult=0.5,
                                        in_chans=1, num_classes=10)
        model, info = finetune(model, "fashion-mnist", PRE, steps=args.train_steps, batch=64,
                               lr=0.02, fake_quant=False)
        ckpt = str(work / "v2_050.safetensors")
        meta = {"classes": FASHION_MNIST_CLASSES, "preprocessing": PRE, "training": info}
        save_weights(ckpt, model, meta)
        model, meta = load_model(ckpt)
    t_train = time.time() - t0
    ptq = quantize_checkpoint(model, meta, work / "ptq_int8.onnx", "fashion-mnist", calib_size=512)
    qat = quantize_checkpoint(model, meta, work / "qat_int8.onnx", "fashion-mnist", calib_size=512,
                              qat_steps=args.qat_steps)
    result = {"checkpoint": ckpt, "train_seconds": round(t_train), "ptq": ptq, "qat": qat}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
