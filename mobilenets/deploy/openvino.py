"""int8 for OpenVINO: NNCF's post-training quantization of the fp32 ONNX export.

NNCF (OpenVINO's own compression tool) calibrates on the same images as the ONNX Runtime and
ExecuTorch paths and writes QuantizeLinear/DequantizeLinear pairs where OpenVINO's CPU plugin
fuses them into its int8 kernels; OpenVINO reads the pairs as FakeQuantize. The file stays one
.onnx with the mobilenets metadata and checksum, so `verify`, `Predictor` (on ONNX Runtime) and
`bench --backends openvino-int8` (on OpenVINO) take it like any other export.

The recipe is the other engines': min/max activation ranges over the calibration images, and
preset "mixed" (symmetric int8 weights, asymmetric activations). NNCF's defaults differ on both:
activations symmetric ("performance"), which spends half the range on values that ReLU6 never
produces and that h-swish reaches only down to -0.375, and ranges from the mean of each image's
min and max, which clips. On the untrained V2 and V3-Small of the tests (64 calibration images)
the defaults agreed with fp32 on 73% and 74% of top-1 classes, this recipe on 81% and 92%
(ONNX Runtime's int8: 80% and 88%). NNCF's fast bias correction stays on.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.checksum import seal_file, with_placeholder
from ..core.errors import MobileNetsError
from ..core.io import atomic_path, check_writable
from ..datasets.calibration import calibration_set, load_images, preprocessed
from .backends import OpenVinoBackend, compile_for_openvino
from .export import INPUT_NAME, METADATA_KEY, export, export_metadata
from .mobile import first_line, require
from .qat import finetune
from .quantize import checked_calibration


def quantize_openvino(fp32_path: str | os.PathLike, out: str | os.PathLike, calibration: torch.Tensor,
                      extra_meta: dict | None = None) -> Path:
    """Write NNCF's int8 form of an fp32 mobilenets ONNX file, calibrated on `calibration`
    (preprocessed images N×C×H×W), with the metadata copied over as precision "int8"."""
    import onnx
    nncf = require("nncf", f"{out}: OpenVINO int8")
    meta = checked_calibration(fp32_path, calibration)
    out = check_writable(out)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    images = [calibration[i:i + 1].numpy() for i in range(len(calibration))]
    dataset = nncf.Dataset(images, lambda x: {INPUT_NAME: x})
    minmax = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    try:
        with _nncf_output_to_stderr():
            proto = nncf.quantize(onnx.load(str(fp32_path)), dataset, subset_size=len(images),
                                  preset=nncf.QuantizationPreset.MIXED, advanced_parameters=minmax)
    except Exception as e:  # NNCF reports graphs it cannot handle with assorted exception types
        raise MobileNetsError(f"{fp32_path}: NNCF cannot quantize it ({first_line(e)})") from e
    meta = {**meta, "precision": "int8",
            "quantization": {"engine": "openvino", "tool": f"nncf {nncf.__version__}", "format": "QDQ",
                             "preset": "mixed", "weights": "int8 symmetric per-channel",
                             "activations": "8-bit asymmetric", "calibration": "minmax, fast bias correction",
                             "calibration_images": len(images), **(extra_meta or {})}}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(with_placeholder(meta))})
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
        seal_file(tmp)
    return out


@contextlib.contextmanager
def _nncf_output_to_stderr():
    """NNCF draws progress bars on stdout and logs there too; stdout is the CLI's (`--json`), so
    for the span of a call both go to stderr and NNCF's log keeps to warnings."""
    logger = logging.getLogger("nncf")
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    level, streams = logger.level, [h.stream for h in handlers]
    logger.setLevel(max(level, logging.WARNING))
    for h in handlers:
        h.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logger.setLevel(level)
        for h, stream in zip(handlers, streams):
            h.setStream(stream)


def openvino_accuracy(path: Path, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (%) of an ONNX classifier run on OpenVINO, on preprocessed images."""
    backend = OpenVinoBackend(path)
    right = sum(int((backend(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                for i in range(0, len(images), batch))
    return 100.0 * right / len(images)


def quantize_openvino_checkpoint(model: torch.nn.Module, meta: dict, out: str | os.PathLike, data: str,
                                 calib_size: int = 512, eval_size: int = 10000, qat_steps: int = 0) -> dict:
    """fp32 export → [QAT fine-tuning] → NNCF int8 ONNX at `out`; both forms scored on OpenVINO
    on the test split when `data` has labels. Returns a summary like `quantize_checkpoint`'s."""
    require("openvino", f"{out}: OpenVINO int8")
    check_writable(out)
    pre = export_metadata(model, meta)["preprocessing"]
    calib = calibration_set(data, pre, calib_size)
    summary = {"out": str(out), "calibration_images": len(calib), "method": "nncf"}
    extra = {}
    if qat_steps:
        model, summary["qat"] = finetune(model, data, pre, steps=qat_steps)
        extra["qat"] = summary["qat"]
    with tempfile.TemporaryDirectory(prefix="mobilenets-ov-quant-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        export(model, fp32, "onnx", meta, check_inputs=calib[:3])
        quantize_openvino(fp32, out, calib, extra_meta=extra)
        if eval_size and data == "fashion-mnist":
            images, labels = load_images(data, pre, "test")
            images, labels = preprocessed(images[:eval_size], pre), labels[:eval_size]
            summary["top1_fp32"] = openvino_accuracy(fp32, images, labels)
            summary["top1_int8"] = openvino_accuracy(Path(out), images, labels)
            summary["eval_images"] = len(images)
    return summary


def int8_share(path: Path, threads: int = 1) -> float:
    """The share of convolutions OpenVINO's CPU plugin runs in int8 after compiling `path`: what
    says whether its quantize/dequantize pairs were fused or left as float work."""
    backend = OpenVinoBackend(path, threads)
    convs = [op.get_rt_info()["runtimePrecision"].astype(str) for op in backend.compiled.get_runtime_model().get_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    return float(np.mean([p in ("i8", "u8") for p in convs])) if convs else 0.0


# Nodes of a compiled model that move or hold data rather than compute.
_OV_BOOKKEEPING = {"Input", "Output", "Parameter", "Result", "Const", "Constant", "Reorder", "Reshape",
                   "Concatenation", "Split", "Transpose"}


def float_ops(path: Path, threads: int = 1) -> dict:
    """The compute nodes OpenVINO's CPU plugin runs in float after compiling the int8 `path`, by
    layer type ({type: count}): the work its quantize/dequantize pairs did not fold into int8."""
    out: dict[str, int] = {}
    for op in compile_for_openvino(path, threads).get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        if kind not in _OV_BOOKKEEPING and precision in ("f32", "bf16", "f16"):
            out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))
