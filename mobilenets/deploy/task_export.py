"""ONNX export of the detection and segmentation models, checked in ONNX Runtime.

A detector is exported with its box decoding inside (anchors are constants of the graph): the
graph maps images to boxes in pixels (B, N, 4) and class probabilities (B, N, C); NMS stays
outside it (`detection.select` on the two outputs), where thresholds can change without
re-exporting. A segmenter
maps images to logits (B, C, H, W). The file carries the same `mobilenets.json` metadata as the
classifiers' exports, plus "task".
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from ..models.detection import class_scores, decode
from ..core.errors import MobileNetsError
from .export import ExportReference
from ..core.checksum import seal_file, with_placeholder
from ..core.io import atomic_path, check_writable

METADATA_KEY = "mobilenets.json"
MAX_BATCH = 256


class DetectionGraph(nn.Module):
    """images → (boxes in pixels, class probabilities), for one fixed image size."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.register_buffer("anchors", model.anchors(image_size))

    def forward(self, x: torch.Tensor):
        logits, deltas = self.model(x)
        return decode(deltas, self.anchors), class_scores(logits, self.model.classification)


def _graph(model: nn.Module, resolution: int) -> tuple[nn.Module, list[str]]:
    task = getattr(model, "task", None)
    if task == "detection":
        return DetectionGraph(model, (resolution, resolution)).eval(), ["boxes", "scores"]
    if task == "segmentation":
        return model.eval(), ["logits"]
    raise MobileNetsError(f"{getattr(model, 'model_name', type(model).__name__)} is not a detection "
                          "or segmentation model; export classifiers with `mobilenets export`")


def metadata(model: nn.Module, resolution: int, classes=None) -> dict:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return {"format": "mobilenets/1", "task": model.task,
            "model": getattr(model, "model_name", type(model).__name__),
            "model_kwargs": getattr(model, "model_kwargs", {}),
            "classes": classes if classes is not None else getattr(model, "classes", None),
            "preprocessing": {"resolution": resolution, "mean": list(cfg.get("mean", (0.0,))),
                              "std": list(cfg.get("std", (1.0,))), "in_chans": cfg.get("in_chans", 3)},
            "input_shape": [cfg.get("in_chans", 3), resolution, resolution]}


def export_onnx(model: nn.Module, path: str | os.PathLike, resolution: int, classes=None) -> dict:
    """Write `model` as ONNX with a dynamic batch; the file appears only if ONNX Runtime's
    outputs are as close to the float64 model as the classifiers' exports must be
    (`export.ExportReference`) and a segmenter's per-pixel classes match PyTorch's.
    Returns {"path", "outputs", "max_rel_error", "allowed_rel_error"}."""
    import onnx
    check_writable(path)
    graph, names = _graph(model, resolution)
    meta = metadata(model, resolution, classes)
    x = torch.randn(2, *meta["input_shape"], generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.onnx.export(graph, (x,), None, input_names=["images"], output_names=names,
                                    dynamic_shapes={"x": {0: batch}}, external_data=False,
                                    verbose=False)
        expected = graph(x)
    reference = ExportReference(graph, x)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(with_placeholder(meta))})
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        seal_file(tmp)
        got = run_onnx(tmp, x)
        error = reference.check("ONNX", got if len(got) > 1 else got[0], path)
        compare(model.task, expected if isinstance(expected, tuple) else (expected,), got, path)
    return {"path": str(path), "outputs": names, "max_rel_error": error,
            "allowed_rel_error": reference.allowed}


def run_onnx(path, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, {"images": x.numpy()}))


def compare(task: str, expected, got, path) -> None:
    """What a closeness bound cannot show: a segmenter's masks are PyTorch's."""
    # NMS runs outside the graph in the same code for both, so a detector's check is its
    # boxes and scores; near-tied scores of an untrained net may reorder, which is not an error.
    if task == "segmentation":
        agree = (expected[0].argmax(1) == got[0].argmax(1)).float().mean().item()
        if agree < 0.999:
            raise MobileNetsError(f"{path}: ONNX Runtime's masks agree with PyTorch's on only "
                                  f"{agree:.2%} of pixels; file not written")
