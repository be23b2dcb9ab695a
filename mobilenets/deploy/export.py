"""Export a model to ONNX, TorchScript, torch.export (.pt2), ExecuTorch (.pte, `executorch.py`)
or LiteRT (.tflite, `litert.py`), with its metadata inside the file.

Each exported file carries one JSON document (key / extra file `mobilenets.json`):
  format "mobilenets/1", model, model_kwargs, classes, preprocessing, precision, input_shape
so that `Predictor` can feed it and name its classes without the checkpoint. Exports are of the
inference form (`fuse.prepare_for_inference`), have a dynamic batch dimension and a fixed image
size, and are checked against the PyTorch model before they are renamed into place: a failed
export or check leaves no file behind.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.checksum import check_flat, check_zip, seal_file, seal_zip, with_placeholder
from ..core.errors import MobileNetsError
from .fuse import prepare_for_inference
from ..core.io import atomic_path, check_writable
from ..models.mobilenet import create_model, list_models
from ..models.mobilenet import load_model
from .metadata import METADATA_KEY, export_metadata, preprocessing_of  # noqa: F401  (re-exported)
from .metadata import parse_meta as _parse_meta
from .mobile import MOBILE_FORMATS, require

FORMATS = ("onnx", "torchscript", "pt2") + MOBILE_FORMATS
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2", "executorch": ".pte",
            "tflite": ".tflite"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
MAX_BATCH = 4096
# The check compares an exported file with the exact answer (the same model run in float64) and
# allows it what float32 costs on this model and input: max(EXPORT_RTOL, FP32_NOISE_FACTOR ×
# PyTorch float32's own error), at most EXPORT_MAX_RTOL; an error is max |Δ| / max |exact|.
# Well-conditioned models (V1, V2, trained ones) are ~1e-6 off in float32 and keep EXPORT_RTOL.
# A V3 whose BN statistics come from Fashion-MNIST is not, on Gaussian inputs: activations reach
# ~1e4, squeeze-excite gates amplify rounding ~1000×, and PyTorch float32 itself is up to 1e-3
# from float64. ONNX Runtime's per-layer errors are the same size, but its amplified total was
# 0.3–3.2× PyTorch's on bench's V3 models and 14× on one made 30× worse (docs/deploy.md).
# A swapped activation that the inputs exercise is 4e-2 off or more; past EXPORT_MAX_RTOL the
# check could no longer tell such a bug from rounding, so it refuses rather than passes.
EXPORT_RTOL = 1e-4
FP32_NOISE_FACTOR = 16
EXPORT_MAX_RTOL = 1e-2


def resolve_model(spec: str, pretrained: str | bool | None = None, **model_kwargs) -> tuple[nn.Module, dict]:
    """A checkpoint path (loaded) or a registered model name (random weights, or with
    `pretrained` a published tag's, as `create_model` takes it): (model, meta)."""
    if pretrained is not None:
        if os.path.exists(spec):
            raise MobileNetsError(f"{spec}: --pretrained takes a model name, not a weights file")
        return create_model(spec, pretrained=pretrained, **model_kwargs).eval(), {}
    if spec in list_models() and not os.path.exists(spec):
        return create_model(spec, **model_kwargs).eval(), {}
    if os.path.exists(spec) and not spec.endswith(".safetensors"):
        raise MobileNetsError(f"{spec}: not a .safetensors checkpoint; allowed: a checkpoint or a "
                              "model name (see `mobilenets models`)")
    model, meta = load_model(spec, **model_kwargs)
    return model.eval(), meta


def example_input(meta: dict, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Inputs in the range the network sees after normalisation (unit Gaussian)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *meta["input_shape"], generator=g)


def _rel_error(got, ref64) -> float:
    """max |got − ref| over max |ref|: the largest error relative to the largest logit; for
    several outputs (a detector's boxes and scores), the largest over them."""
    if isinstance(ref64, (tuple, list)):
        return max(_rel_error(g, r) for g, r in zip(got, ref64))
    diff = (torch.as_tensor(got).double() - ref64).abs().max()
    return (diff / ref64.abs().max().clamp_min(1e-300)).item()


class ExportReference:
    """The exact answer on the check's inputs (the model in float64) and PyTorch float32's own
    error against it, which sets how far an exported file may be from it (see EXPORT_RTOL).
    Models with several outputs are compared output by output."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        with torch.inference_mode():
            self.exact = copy.deepcopy(model).eval().double()(x.double())
            self.fp32_error = _rel_error(model.eval()(x), self.exact)
        self.allowed = min(max(EXPORT_RTOL, FP32_NOISE_FACTOR * self.fp32_error), EXPORT_MAX_RTOL)

    def check(self, name: str, got, path: Path) -> float:
        err = _rel_error(got, self.exact)
        if not err <= self.allowed:
            raise MobileNetsError(
                f"{path}: {name} export is {err:.2e} from the float64 reference (relative; allowed "
                f"{self.allowed:.1e}, PyTorch float32 is {self.fp32_error:.1e}); file not written")
        return err


def onnx_metadata(path: str | os.PathLike) -> dict:
    """The mobilenets metadata of an .onnx file, after its checksum (if recorded) is checked."""
    import onnx
    _refuse_empty(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ... for a bad file
        raise MobileNetsError(f"{path}: not a readable ONNX file ({type(e).__name__})") from e
    _check_external_data(proto, Path(path))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = _parse_meta(props.get(METADATA_KEY), path)
    check_flat(path)
    return meta


def _refuse_empty(path) -> None:
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise MobileNetsError(f"{path}: is empty (0 bytes)")


def _check_external_data(proto, path: Path) -> None:
    """Refuse tensors whose external data lies outside the model's folder (an absolute path or
    one climbing out with ..): loading them would read any file the user can."""
    import onnx
    folder = path.resolve().parent
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not (folder / location).resolve().is_relative_to(folder):
            raise MobileNetsError(f"{path}: tensor {tensor.name!r} reads external data from "
                                  f"{location!r}; allowed: files inside {folder}")


def _tensors(graph):
    """Every tensor of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Silence loggers that print a whole traceback before the exception they log is raised
    (torch.export's deserializer); the exception itself becomes one line."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_torchscript(path) -> tuple[torch.nn.Module, str]:
    """(module, metadata text) of a TorchScript file, after its checksum (if recorded) is
    checked on the archive's members, before TorchScript reads it."""
    check_zip(path, METADATA_KEY, "TorchScript file")
    extra = {METADATA_KEY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(str(path), _extra_files=extra)
        except RuntimeError as e:
            raise MobileNetsError(f"{path}: not a readable TorchScript file ({str(e).splitlines()[0][:100]})") from None
    return module.eval(), extra[METADATA_KEY]


def load_pt2(path) -> tuple[torch.nn.Module, str]:
    """(module, metadata text) of a torch.export file, after its checksum (if recorded) is
    checked; an empty, cut-short or non-zip file is refused before torch.export reads it."""
    check_zip(path, METADATA_KEY, "torch.export file")
    extra = {METADATA_KEY: ""}
    try:
        with open(path, "rb") as f, _quiet_loggers("torch._export", "torch.export"):
            program = torch.export.load(f, extra_files=extra)
    except Exception as e:  # torch.export's deserializer raises many types for a damaged archive
        while e.__cause__ is not None or e.__context__ is not None:   # its own words, not the wrapper's
            e = e.__cause__ or e.__context__
        first = (str(e).strip().splitlines() or [""])[0][:160]
        if "warnings above" in first:   # the warnings it points at are the silenced log
            first = "a zip archive whose members do not deserialize as an ExportedProgram"
        raise MobileNetsError(f"{path}: not a readable torch.export file ({type(e).__name__}"
                              f"{': ' + first if first else ''})") from None
    return program.module(), extra[METADATA_KEY]


def write_onnx(model: nn.Module, path: Path, meta: dict, x: torch.Tensor) -> torch.nn.Module:
    import onnx
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(model, (x,), None, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes={"x": {0: batch}},
                                external_data=False, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(with_placeholder(meta))})
    onnx.save(proto, str(path))
    seal_file(path)
    return proto


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with full graph optimisation and `threads` intra-op threads."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types
        raise MobileNetsError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:120]})") from None


def export(model: nn.Module, path: str | os.PathLike, fmt: str, meta: dict | None = None,
           check: bool = True, check_inputs: torch.Tensor | None = None) -> dict:
    """Write `model` (any mobilenets model; fused here) to `path` in `fmt`.

    The file is run on `check_inputs` (preprocessed images; by default 3 unit-Gaussian ones): pass
    real images where there are some, since only inputs like the model's data exercise its
    activations where they bend.

    Returns {"path", "format", "max_rel_error", "fp32_rel_error", "allowed_rel_error"}: the
    file's and PyTorch float32's largest errors against the float64 model, relative to the
    largest logit, and the bound (see EXPORT_RTOL); raises MobileNetsError when the export fails
    or its error exceeds the bound. ExecuTorch adds "delegation": what runs outside XNNPACK.
    """
    if fmt not in FORMATS:
        raise MobileNetsError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    path = Path(path)
    check_writable(path)        # before the converters' imports, which log warnings
    if fmt in MOBILE_FORMATS:   # before anything is written: one line without the extra
        require("executorch.exir" if fmt == "executorch" else "litert_torch",
                f"{path}: {'ExecuTorch' if fmt == 'executorch' else 'LiteRT'} export")
    info = export_metadata(model, meta)
    fused = prepare_for_inference(model, channels_last=fmt not in ("onnx",) + MOBILE_FORMATS)
    x = example_input(info, batch=2)
    x3 = example_input(info, batch=3, seed=1) if check_inputs is None else check_inputs
    if len(x3) == len(x):
        x3 = torch.cat([x3, x3[:1]])   # a batch size the export never saw
    ref = ExportReference(model, x3) if check else None
    err, report = float("nan"), {}
    with atomic_path(path) as tmp:
        try:
            if fmt == "executorch":
                from .executorch import ExecuTorchBackend, write_pte
                report = write_pte(fused, tmp, info, x)
                if check:
                    err = ref.check("ExecuTorch", ExecuTorchBackend(tmp)(x3), path)
            elif fmt == "tflite":
                from .litert import TFLiteBackend, write_tflite
                write_tflite(fused, tmp, info, x)
                if check:
                    err = ref.check("LiteRT", TFLiteBackend(tmp)(x3), path)
            elif fmt == "onnx":
                write_onnx(fused, tmp, info, x)
                if check:
                    got = ort_session(tmp).run(None, {INPUT_NAME: x3.numpy()})[0]
                    err = ref.check("ONNX", got, path)
            elif fmt == "torchscript":
                with torch.no_grad(), warnings.catch_warnings():
                    # TorchScript is deprecated upstream but still what C++/mobile runtimes load.
                    warnings.simplefilter("ignore", FutureWarning)
                    traced = torch.jit.trace(fused, (x,), check_trace=False)
                    traced = torch.jit.freeze(traced.eval())
                    seal_zip(tmp, lambda m: torch.jit.save(
                        traced, str(tmp), _extra_files={METADATA_KEY: json.dumps(m)}), info, METADATA_KEY)
                if check:
                    with torch.inference_mode():
                        got = load_torchscript(tmp)[0](x3)
                    err = ref.check("TorchScript", got, path)
            else:
                batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
                program = torch.export.export(fused, (x,), dynamic_shapes=({0: batch},))
                # A file object: torch.export insists on a .pt2 name, which the temp file lacks.
                def write_pt2(m: dict) -> None:
                    with open(tmp, "wb") as f:
                        torch.export.save(program, f, extra_files={METADATA_KEY: json.dumps(m)})
                seal_zip(tmp, write_pt2, info, METADATA_KEY)
                if check:
                    with open(tmp, "rb") as f, torch.inference_mode():
                        got = torch.export.load(f).module()(x3)
                    err = ref.check("torch.export", got, path)
        except MobileNetsError:
            raise
        except Exception as e:  # the exporters raise many types; one line, then no file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise MobileNetsError(f"{path}: {fmt} export failed ({type(e).__name__}: {first})") from None
    return {"path": str(path), "format": fmt, "max_rel_error": err,
            "fp32_rel_error": ref.fp32_error if ref else float("nan"),
            "allowed_rel_error": ref.allowed if ref else float("nan"),
            **({"delegation": report} if report else {})}
