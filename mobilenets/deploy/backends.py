"""Runtimes for each saved form of a model: a backend loads one file and turns a batch of
preprocessed images into logits. Each has `meta` (the mobilenets metadata: model, model_kwargs,
classes, preprocessing, input_shape, precision) and `__call__(x) -> logits`.

`BACKENDS` maps a file suffix to its backend class, the table `Predictor` dispatches on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.checksum import ChecksumMismatch
from ..core.errors import MobileNetsError
from .export import (INPUT_NAME, _parse_meta, export_metadata, load_pt2, load_torchscript,
                     onnx_metadata, ort_session)
from .executorch import ExecuTorchBackend
from .fuse import prepare_for_inference
from .litert import TFLiteBackend
from .mobile import first_line, require
from ..models.mobilenet import load_model
from ..train.checkpoint import CHECKPOINT_FORMAT

# The preprocessing that shapes and normalises a model's input: Predictor needs all of it, and
# a checkpoint that records only part of it has the rest from the model's defaults.
INPUT_PREPROCESSING = ("resolution", "in_chans", "mean", "std")


class TorchBackend:
    """A mobilenets .safetensors checkpoint, run eagerly in its inference form."""

    def __init__(self, path: Path, threads: int | None = None):
        model, meta = load_model(path)
        if meta.get("preprocessing"):
            cfg = model.pretrained_cfg  # the file's preprocessing over the model's defaults
            meta = {**meta, "preprocessing": {**{k: cfg[k] for k in INPUT_PREPROCESSING if k in cfg},
                                              **meta["preprocessing"]}}
        self.meta = export_metadata(model, meta)
        classifier = getattr(model, "classifier", None)
        self.num_outputs = classifier.out_features if isinstance(classifier, torch.nn.Linear) else None
        self.model = prepare_for_inference(model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.contiguous(memory_format=torch.channels_last))


class OnnxBackend:
    """An .onnx file from `mobilenets export` or `mobilenets quantize` (fp32 or int8), on ONNX
    Runtime. A graph whose input does not match its metadata (another model's file) is refused."""

    def __init__(self, path: Path, threads: int | None = None):
        self.meta = onnx_metadata(path)
        self.session = ort_session(path, threads)
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape[1:]) if len(inputs) == 1 else None
        if inputs[0].name != INPUT_NAME or shape != self.meta["input_shape"]:
            raise MobileNetsError(f"{path}: its graph takes {[i.shape for i in inputs]}, but its "
                                  f"metadata describes {self.meta['model']} on {self.meta['input_shape']}")
        outputs = self.session.get_outputs()[0].shape
        self.num_outputs = outputs[-1] if len(outputs) == 2 and isinstance(outputs[-1], int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {INPUT_NAME: x.numpy()})[0])


class ExportedProgramBackend:
    """A torch.export .pt2 file (a serialized graph: loading runs no Python code from it)."""

    def __init__(self, path: Path, threads: int | None = None):
        self.module, text = load_pt2(path)
        self.meta = _parse_meta(text, path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x.contiguous(memory_format=torch.channels_last))


class TorchScriptBackend:
    def __init__(self, path: Path, threads: int | None = None):
        try:
            self.module, text = load_torchscript(path)
        except ChecksumMismatch:
            raise
        except MobileNetsError as e:
            if is_training_checkpoint(path):
                raise MobileNetsError(
                    f"{path}: a training checkpoint ({CHECKPOINT_FORMAT}: the whole training state), "
                    f"not an exported model; predict with {path.parent / 'best.safetensors'}, the "
                    "run's best weights, or an export of them") from e
            raise
        self.meta = _parse_meta(text, path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


def is_training_checkpoint(path: Path) -> bool:
    """Whether `path` is the trainer's last.pt, read as tensors and plain containers only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable, a pickle of anything else, not a zip archive: not one
        return False
    return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT


def compile_for_openvino(path: Path, threads: int | None = None):
    """Any .onnx file compiled by OpenVINO's CPU plugin as `OpenVinoBackend` runs it (no
    mobilenets metadata needed: also for files made by other tools)."""
    ov = require("openvino", "The openvino backend")
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads()),
              "INFERENCE_PRECISION_HINT": "f32"}
    try:
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    except RuntimeError as e:
        raise MobileNetsError(f"{path}: OpenVINO cannot compile it ({first_line(e)})") from e


class OpenVinoBackend:
    """An fp32 .onnx file from `mobilenets export` on OpenVINO's CPU plugin (the 'mobile' extra):
    a `bench` backend, not one `Predictor` picks by suffix.

    Compiled for latency with one stream, `threads` inference threads and fp32 arithmetic: the
    plugin's default precision hint is bf16 on CPUs with native bf16 (AVX512-BF16 / AMX), which
    would compare a bf16 model with fp32 ones."""

    def __init__(self, path: Path, threads: int | None = None):
        require("openvino", "The openvino backend")
        self.meta = onnx_metadata(path)
        self.compiled = compile_for_openvino(path, threads)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer([x.float().contiguous().numpy()], share_inputs=True)
        return torch.from_numpy(out[0].copy())


BACKENDS = {".safetensors": TorchBackend, ".onnx": OnnxBackend, ".pt2": ExportedProgramBackend,
            ".ts": TorchScriptBackend, ".pt": TorchScriptBackend, ".torchscript": TorchScriptBackend,
            ".pte": ExecuTorchBackend, ".tflite": TFLiteBackend}
