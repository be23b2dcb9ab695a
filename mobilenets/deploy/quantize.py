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

For phones, `quantize_pte_checkpoint` writes an int8 ExecuTorch .pte instead (PT2E with
ExecuTorch's XNNPACK quantizer, the same calibration images and min/max ranges; executorch.py).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.checksum import seal_file, with_placeholder
from ..core.errors import MobileNetsError
from .export import INPUT_NAME, METADATA_KEY, export, export_metadata, onnx_metadata, ort_session
from ..core.io import atomic_path, check_writable
from ..datasets.calibration import calibration_set, load_images, preprocessed
from .qat import finetune

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# The rewrite changes float rounding only (a folded scale, an unfused activation): float32's
# export tolerance (EXPORT_RTOL) is what it may cost.
REWRITE_RTOL = 1e-4


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


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has a VNNI int8 dot-product instruction (AVX512-VNNI or AVX-VNNI)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags


def quantize_onnx(fp32_path: str | os.PathLike, out: str | os.PathLike, calibration: torch.Tensor,
                  method: str = "minmax", per_channel: bool = True, extra_meta: dict | None = None,
                  reduce_range: bool | None = None) -> Path:
    """Write the int8 QDQ form of an fp32 mobilenets ONNX file, calibrated on `calibration`
    (preprocessed images N×C×H×W). Metadata is copied over with precision "int8".

    `reduce_range` quantizes weights to 7 bits. Without VNNI, x86 int8 kernels multiply uint8
    activations by int8 weights into saturating 16-bit sums (vpmaddubsw), which overflow with
    full-range weights; on an AVX2-only CPU here that cut the int8/fp32 logit correlation of a
    small V2 from 0.91 to 0.84. None (default): reduce when this CPU has no VNNI, since the file
    is usually run where it is made; pass False for a VNNI target, True for a mixed fleet."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    if method not in CALIBRATION_METHODS:
        raise MobileNetsError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    meta = checked_calibration(fp32_path, calibration)
    out = check_writable(out)
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmpdir:
        prepped, rewritten = Path(tmpdir) / "prepped.onnx", Path(tmpdir) / "rewritten.onnx"
        rewrites = _write_quantizable(fp32_path, rewritten, calibration[:8])
        quant_pre_process(str(rewritten), str(prepped), skip_symbolic_shape=True)
        with atomic_path(out) as tmp:
            quantize_static(
                str(prepped), str(tmp), _Reader(calibration),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax,
                                  "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[method],
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                calibration_providers=["CPUExecutionProvider"])
            proto = onnx.load(str(tmp))
            meta = {**meta, "precision": "int8",
                    "quantization": {"engine": "onnxruntime", "format": "QDQ",
                                     "weights": ("int8 symmetric per-channel" if per_channel else "int8 per-tensor")
                                                + (", 7-bit range" if reduce_range else ""),
                                     "activations": "uint8 asymmetric", "calibration": method,
                                     "calibration_images": len(calibration),
                                     "rewritten_for_int8": {k: v for k, v in rewrites.items() if v},
                                     **(extra_meta or {})}}
            del proto.metadata_props[:]
            onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(with_placeholder(meta))})
            onnx.save(proto, str(tmp))
            seal_file(tmp)
    return out


def checked_calibration(fp32_path, calibration: torch.Tensor) -> dict:
    """The fp32 file's metadata, once the calibration images are known to fit it."""
    if len(calibration) == 0:
        raise MobileNetsError("calibration set is empty")
    meta = onnx_metadata(fp32_path)
    if list(calibration.shape[1:]) != meta["input_shape"]:
        raise MobileNetsError(f"calibration images are {list(calibration.shape[1:])}, "
                              f"{fp32_path} takes {meta['input_shape']}")
    return meta


def _write_quantizable(fp32_path, out: Path, images: torch.Tensor) -> dict:
    """Write the float graph in ops the quantizer keeps in int8 (`qdq_rewrite`), after checking
    that it computes what the original does on `images`. Returns the rewrite counts."""
    import onnx
    from .qdq_rewrite import quantizable_graph
    proto = onnx.load(str(fp32_path))
    counts = quantizable_graph(proto)
    onnx.save(proto, str(out))
    x = {INPUT_NAME: images.numpy()}
    ref = ort_session(fp32_path, 1).run(None, x)[0]
    got = ort_session(out, 1).run(None, x)[0]
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
    if not err <= REWRITE_RTOL:
        raise MobileNetsError(f"{fp32_path}: the int8-ready float graph is {err:.1e} from the original "
                              f"(relative; allowed {REWRITE_RTOL:.0e}); nothing written")
    return counts


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
    check_writable(out)
    pre = export_metadata(model, meta)["preprocessing"]
    calib = calibration_set(data, pre, calib_size)
    summary = {"out": str(out), "calibration_images": len(calib), "method": method}
    extra = {}
    if qat_steps:
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


def quantize_pte_checkpoint(model: torch.nn.Module, meta: dict, out: str | os.PathLike, data: str,
                            calib_size: int = 512, eval_size: int = 10000, qat_steps: int = 0) -> dict:
    """[QAT fine-tuning] → calibrated int8 ExecuTorch .pte at `out` (XNNPACK, PT2E, min/max
    ranges: `executorch.quantize_pte`); accuracy of the fp32 model and of the file on the test
    split when `data` has labels. Returns a summary dict like `quantize_checkpoint`'s, with the
    file's top-1 agreement with fp32 on the calibration images and its delegation."""
    from .executorch import ExecuTorchBackend, quantize_pte
    from .fuse import prepare_for_inference
    from .mobile import require
    require("executorch.exir", f"{out}: ExecuTorch int8 export")
    check_writable(out)
    pre = export_metadata(model, meta)["preprocessing"]
    calib = calibration_set(data, pre, calib_size)
    extra = {}
    if qat_steps:
        model, extra["qat"] = finetune(model, data, pre, steps=qat_steps)
    summary = {**quantize_pte(model, meta, out, calib, extra_meta=extra), "method": "minmax",
               **({"qat": extra["qat"]} if qat_steps else {})}
    if eval_size and data == "fashion-mnist":
        images, labels = load_images(data, pre, "test")
        images, labels = preprocessed(images[:eval_size], pre), labels[:eval_size]
        fused = prepare_for_inference(model, channels_last=False)
        with torch.inference_mode():
            fp32 = torch.cat([fused(c) for c in images.split(256)])
        int8 = ExecuTorchBackend(Path(out))(images)
        summary["eval_images"] = len(images)
        summary["top1_fp32"] = 100.0 * (fp32.argmax(1) == labels).float().mean().item()
        summary["top1_int8"] = 100.0 * (int8.argmax(1) == labels).float().mean().item()
    return summary
