"""Runtimes for each saved form of a model: a backend loads one file and turns a batch of
preprocessed images into logits. Each has `meta` (the mobilenets metadata: model, model_kwargs,
classes, preprocessing, input_shape, precision) and `__call__(x) -> logits`.

`BACKENDS` maps a file suffix to its backend class, the table `Predictor` dispatches on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import MobileNetsError
from .export import (INPUT_NAME, _parse_meta, export_metadata, load_pt2, load_torchscript,
                     onnx_metadata, ort_session)
from .fuse import prepare_for_inference
from ..models.mobilenet import load_model


class TorchBackend:
    """A mobilenets .safetensors checkpoint, run eagerly in its inference form."""

    def __init__(self, path: Path, threads: int | None = None):
        model, meta = load_model(path)
        self.meta = export_metadata(model, meta)
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
        self.module, text = load_torchscript(path)
        self.meta = _parse_meta(text, path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


BACKENDS = {".safetensors": TorchBackend, ".onnx": OnnxBackend, ".pt2": ExportedProgramBackend,
            ".ts": TorchScriptBackend, ".pt": TorchScriptBackend, ".torchscript": TorchScriptBackend}
