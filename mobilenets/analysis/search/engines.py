"""Run one small module (a block, the stem, the last stage) on a deployment engine, as the
whole model would run there: BN folded, exported to that engine's file format, loaded by its
runtime. The latency tables time these pieces.

ONNX pieces are written with torch's TorchScript-based ONNX exporter: 30× faster to export a
block than the dynamo exporter `mobilenets export` uses (0.07 s against 2.6 s here), and the
same operators reach ONNX Runtime's graph optimiser, which fuses BN-folded Conv, Relu/Clip and
Add the same way.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ...core.errors import MobileNetsError
from ...deploy.backends import OpenVinoBackend
from ...deploy.export import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ort_session
from ...deploy.fuse import prepare_for_inference
from ...deploy.mobile import require
from ...deploy.quantize import quantize_onnx

ENGINES = ("onnxruntime", "int8", "openvino", "executorch", "executorch-int8", "eager")


def engine_versions(engine: str) -> dict:
    """The versions that decide an engine's speed: torch always, and the engine's runtime."""
    import importlib.metadata as md
    packages = {"onnxruntime": ["onnxruntime"], "int8": ["onnxruntime"],
                "openvino": ["openvino", "onnxruntime"], "executorch": ["executorch"],
                "executorch-int8": ["executorch", "torchao"], "eager": []}[engine]
    out = {"torch": torch.__version__}
    for p in packages:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise MobileNetsError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "openvino":
        require("openvino", "The openvino engine")
    if engine.startswith("executorch"):
        require("executorch.runtime", f"The {engine} engine")
    return engine


def _piece_meta(x: torch.Tensor, precision: str = "fp32") -> dict:
    c, h = x.shape[1], x.shape[-1]
    pre = {"resolution": h, "resize": h, "in_chans": c, "mean": [0.0] * c, "std": [1.0] * c,
           "interpolation": "bilinear"}
    return {"format": "mobilenets/1", "model": "latency-table piece", "model_kwargs": {},
            "classes": None, "preprocessing": pre, "precision": precision, "input_shape": [c, h, h]}


def write_piece_onnx(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """The BN-folded `module` as ONNX with a dynamic batch dimension and mobilenets metadata."""
    import onnx
    fused = prepare_for_inference(module, channels_last=False)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fused, (x,), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}},
                          opset_version=17)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(_piece_meta(x))})
    onnx.save(proto, str(path))
    return path


def piece_call(engine: str, module: nn.Module, x: torch.Tensor, workdir: Path, threads: int,
               calibration: torch.Tensor | None = None):
    """A no-argument call that runs `module` on `x` on `engine`, ready to be timed. int8 engines
    calibrate on `calibration` (inputs of `module`; default: `x` and 7 more Gaussian batches)."""
    module = module.eval()
    workdir = Path(workdir)
    if calibration is None:
        g = torch.Generator().manual_seed(0)
        calibration = torch.cat([x[:1]] + [torch.randn(x[:1].shape, generator=g) for _ in range(7)])
    if engine == "eager":
        fused = prepare_for_inference(module)
        xc = x.contiguous(memory_format=torch.channels_last)

        def call():
            with torch.inference_mode():
                fused(xc)
        return call
    if engine in ("onnxruntime", "int8", "openvino"):
        return _onnx_call(engine, write_piece_onnx(module, x, workdir / "piece.onnx"), x, threads, calibration)
    from ...deploy.executorch import quantize_pte, write_pte, xnnpack_ready
    path = workdir / "piece.pte"
    meta = _piece_meta(x)
    if engine == "executorch":
        fused = prepare_for_inference(module, channels_last=False)
        # torch.export specialises a batch of one; a batch of two keeps the dimension dynamic.
        write_pte(xnnpack_ready(fused), path, meta, x if len(x) > 1 else x.repeat(2, 1, 1, 1))
    else:
        quantize_pte(module, meta, path, calibration)
    return _pte_call(path, x, threads)


def _onnx_call(engine: str, path: Path, x: torch.Tensor, threads: int, calibration: torch.Tensor):
    """A call of an fp32 ONNX file on ONNX Runtime or OpenVINO, or of its int8 form."""
    if engine == "int8":
        path = quantize_onnx(path, path.with_name(path.stem + "_int8.onnx"), calibration)
    if engine == "openvino":
        backend = OpenVinoBackend(path, threads)
        xc = x.contiguous()
        return lambda: backend(xc)
    session = ort_session(path, threads)
    arr = x.numpy()
    return lambda: session.run(None, {INPUT_NAME: arr})


def _pte_call(path: Path, x: torch.Tensor, threads: int):
    from ...deploy.executorch import ExecuTorchBackend
    backend = ExecuTorchBackend(path, threads)
    xc = x.contiguous()
    return lambda: backend(xc)


def model_call(engine: str, model: nn.Module, x: torch.Tensor, workdir: Path, threads: int,
               calibration: torch.Tensor | None = None):
    """`piece_call` for a whole model, exported as `mobilenets export` and `quantize` write it,
    so a measured latency is that of the file a user ships."""
    if engine == "eager":
        return piece_call(engine, model, x, workdir, threads)
    from ...deploy.export import export
    workdir = Path(workdir)
    c, h = x.shape[1], x.shape[-1]
    meta = {"preprocessing": {**_piece_meta(x)["preprocessing"],
                              **{k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items()
                                 if k in ("mean", "std") and len(v) == c}}}
    if calibration is None:
        g = torch.Generator().manual_seed(0)
        calibration = torch.randn(16, c, h, h, generator=g)
    if engine in ("onnxruntime", "int8", "openvino"):
        export(model, workdir / "model.onnx", "onnx", meta, check=False)
        return _onnx_call(engine, workdir / "model.onnx", x, threads, calibration)
    from ...deploy.executorch import quantize_pte
    path = workdir / "model.pte"
    if engine == "executorch":
        export(model, path, "executorch", meta, check=False)
    else:
        quantize_pte(model, meta, path, calibration)
    return _pte_call(path, x, threads)
