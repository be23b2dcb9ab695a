"""int8 post-training static quantization with ONNX Runtime (QDQ, per-channel weights).

Why ONNX Runtime rather than PyTorch's PT2E flow (torchao's X86InductorQuantizer + inductor; torch
2.14 no longer ships it, and its eager/FX flows are deprecated): measured head to head with the
same recipe and calibration images (benchmarks/quantize_engines.py, docs/deploy.md), both keep
Fashion-MNIST accuracy, ONNX Runtime is 2× faster at batch 1 and PT2E about 1.25× faster at batch
32 on MobileNetV2; ONNX Runtime's file is portable and loads without compiling (PT2E needs
torchao and an inductor compile per batch size in every process), which decides it. The recipe:
fold BN (done in the fp32 export), ONNX Runtime's quantization pre-processing (shape inference,
graph optimisation), then static QDQ quantization with activation ranges from a calibration set:
uint8 asymmetric activations, int8 symmetric per-output-channel weights (the U8S8 pair MLAS's
VNNI kernels take).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import MobileNetsError
from .export import INPUT_NAME, METADATA_KEY, export, onnx_metadata, ort_session
from .io import atomic_path

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a preprocessed tensor."""

    def __init__(self, images: torch.Tensor, batch: int = 32):
        self.batches = [images[i:i + batch].numpy() for i in range(0, len(images), batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {INPUT_NAME: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_onnx(fp32_path: str | os.PathLike, out: str | os.PathLike, calibration: torch.Tensor,
                  method: str = "minmax", per_channel: bool = True, extra_meta: dict | None = None) -> Path:
    """Write the int8 QDQ form of an fp32 mobilenets ONNX file, calibrated on `calibration`
    (preprocessed images N×C×H×W). Metadata is copied over with precision "int8"."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise MobileNetsError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if len(calibration) == 0:
        raise MobileNetsError("calibration set is empty")
    meta = onnx_metadata(fp32_path)
    if list(calibration.shape[1:]) != meta["input_shape"]:
        raise MobileNetsError(f"calibration images are {list(calibration.shape[1:])}, "
                              f"{fp32_path} takes {meta['input_shape']}")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmpdir:
        prepped = Path(tmpdir) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        with atomic_path(out) as tmp:
            quantize_static(
                str(prepped), str(tmp), _Reader(calibration),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax,
                                  "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[method],
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                calibration_providers=["CPUExecutionProvider"])
            proto = onnx.load(str(tmp))
            meta = {**meta, "precision": "int8",
                    "quantization": {"engine": "onnxruntime", "format": "QDQ",
                                     "weights": "int8 symmetric per-channel" if per_channel else "int8 per-tensor",
                                     "activations": "uint8 asymmetric", "calibration": method,
                                     "calibration_images": len(calibration), **(extra_meta or {})}}
            del proto.metadata_props[:]
            onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
            onnx.save(proto, str(tmp))
    return out


def onnx_accuracy(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor,
                  batch: int = 500) -> float:
    """Top-1 accuracy (%) of an ONNX classifier on preprocessed images."""
    sess = ort_session(path)
    correct = 0
    for i in range(0, len(images), batch):
        logits = sess.run(None, {INPUT_NAME: images[i:i + batch].numpy()})[0]
        correct += int((np.argmax(logits, 1) == labels[i:i + batch].numpy()).sum())
    return 100.0 * correct / len(images)


def quantize_checkpoint(model: torch.nn.Module, meta: dict, out: str | os.PathLike, data: str,
                        calib_size: int = 512, method: str = "minmax", eval_size: int = 10000,
                        qat_steps: int = 0) -> dict:
    """fp32 export → [QAT fine-tuning] → calibrated int8 ONNX at `out`; accuracy of both forms on
    the test split when `data` has labels. Returns a summary dict."""
    from .calibration import calibration_set, load_images, preprocessed
    from .export import export_metadata
    pre = export_metadata(model, meta)["preprocessing"]
    calib = calibration_set(data, pre, calib_size)
    summary = {"out": str(out), "calibration_images": len(calib), "method": method}
    extra = {}
    if qat_steps:
        from .qat import finetune
        model, qat_info = finetune(model, data, pre, steps=qat_steps)
        summary["qat"] = extra["qat"] = qat_info
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        export(model, fp32, "onnx", meta, check_inputs=calib[:3])
        quantize_onnx(fp32, out, calib, method=method, extra_meta=extra)
        if eval_size and data == "fashion-mnist":
            images, labels = load_images(data, pre, "test")
            images, labels = preprocessed(images[:eval_size], pre), labels[:eval_size]
            summary["top1_fp32"] = onnx_accuracy(fp32, images, labels)
            summary["top1_int8"] = onnx_accuracy(out, images, labels)
            summary["eval_images"] = len(images)
    return summary


def add_commands(sub) -> None:
    from .cli import add_model_options
    p = sub.add_parser("quantize", help="int8 ONNX by static quantization with a calibration set")
    p.add_argument("checkpoint", help="a .safetensors checkpoint (or a model name: random weights)")
    p.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist' or a .npy file of uint8 images at the model's input size")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--calib-size", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax")
    p.add_argument("--eval-size", type=int, default=10000,
                   help="test images for the fp32/int8 accuracy check (0: skip)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning (fake-quant) before quantizing")
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args) -> int:
    from .cli import model_kwargs
    from .export import resolve_model
    if args.calib_size < 1:
        raise MobileNetsError(f"--calib-size {args.calib_size}: allowed: integer >= 1")
    model, meta = resolve_model(args.checkpoint, **model_kwargs(args))
    s = quantize_checkpoint(model, meta, args.out, args.data, args.calib_size, args.method,
                            args.eval_size, args.qat_steps if args.qat else 0)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"wrote {s['out']} (int8 QDQ, {s['calibration_images']} calibration images, {s['method']})")
    if "top1_int8" in s:
        print(f"top-1 on {s['eval_images']} test images: fp32 {s['top1_fp32']:.2f}%, "
              f"int8 {s['top1_int8']:.2f}% ({s['top1_int8'] - s['top1_fp32']:+.2f} points)")
    return 0
