"""ExecuTorch programs (.pte) with the XNNPACK delegate, fp32 and int8, and their runtime.

Export: `torch.export` → `to_edge_transform_and_lower` with the XNNPACK partitioner →
`to_executorch`. The file has a dynamic batch dimension up to `PTE_MAX_BATCH`: ExecuTorch plans
its input and output memory for the largest batch, so 4096 like ONNX would plan gigabytes at
224 px; the runner splits larger batches. int8 is PT2E post-training quantization with
ExecuTorch's `XNNPACKQuantizer` (int8 symmetric per-output-channel weights, int8 affine
per-tensor activations, min/max ranges) calibrated on the images `mobilenets quantize` uses for
ONNX Runtime. The mobilenets metadata travels inside the .pte as a constant method
`mobilenets_json` (a uint8 tensor of the JSON text) that the runtime loads like any method.

Before lowering, the export path (never the model) rewrites two modules so that the whole
classifier runs in one XNNPACK subgraph: `nn.Hardsigmoid` becomes relu6(x + 3) / 6 (the edge
decomposition of aten.hardsigmoid leaves 2 scalar-constant copies per squeeze-excite outside the
delegate) and `nn.Flatten` becomes reshape(-1, C) (a flatten with a symbolic batch size is not
delegated and splits the graph in two).
"""
from __future__ import annotations

import copy
import json
import os
import struct
import tempfile
import weakref
from pathlib import Path

import torch
from torch import nn

from ..core.checksum import check_flat, seal_file, with_placeholder
from ..core.errors import MobileNetsError
from ..core.io import atomic_path, check_writable
from .fuse import prepare_for_inference
from .metadata import export_metadata, parse_meta
from .mobile import first_line, require

PTE_MAX_BATCH = 64
PTE_METADATA_METHOD = "mobilenets_json"
PTE_DELEGATE = {"delegate": "XnnpackBackend", "max_batch": PTE_MAX_BATCH}
# Graph nodes that are bookkeeping rather than computation: the delegate call's output unpacking
# and reading the batch size. They are not counted as "outside the delegate".
_BOOKKEEPING = ("getitem", "sym_size")


# -- the export-path rewrites ------------------------------------------------------------------
class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, PyTorch's hardsigmoid, written with ops XNNPACK delegates whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu6(x + 3.0) / 6.0


class FlattenBatch(nn.Module):
    """nn.Flatten(1) as reshape(-1, C·H·W): an inferred batch dimension XNNPACK delegates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 1
        for d in x.shape[1:]:
            n *= d
        return x.reshape(-1, n)


def xnnpack_ready(module: nn.Module) -> nn.Module:
    """A copy of an inference-form model with the rewrites above and NCHW-contiguous weights."""
    module = copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Hardsigmoid):
                setattr(parent, name, HardSigmoid())
            elif isinstance(child, nn.Flatten) and child.start_dim == 1 and child.end_dim == -1:
                setattr(parent, name, FlattenBatch())
    return module


# -- ExecuTorch export ---------------------------------------------------------------------------
def _export_program(module: nn.Module, x: torch.Tensor, max_batch: int = PTE_MAX_BATCH):
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(module, (x[:2],), dynamic_shapes=({0: batch},))


def lower_to_xnnpack(program, meta: dict | None = None):
    """An ExportedProgram lowered to the XNNPACK delegate (an EdgeProgramManager), with `meta`
    as the constant method `mobilenets_json`."""
    exir = require("executorch.exir", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from torch.utils._sympy.value_ranges import ValueRanges
    declared = dict(program.range_constraints)
    methods = None
    if meta is not None:
        text = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
        methods = {PTE_METADATA_METHOD: text}
    edge = exir.to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                            constant_methods=methods)
    # Re-running convolutions on fake tensors asks PyTorch's conv backend selection whether the
    # batch is below 16 (a guard on the example batch of 2), which narrows the batch's range to
    # [2, 15]; memory planning then sizes the input for 15 images and larger batches fail at run
    # time ("Attempted to resize a bounded tensor"). The guard chooses a kernel, not a result, so
    # the range the export declared is put back.
    for node in edge.exported_program().graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or not isinstance(val, torch.Tensor):
            continue
        for d in val.shape:
            if isinstance(d, torch.SymInt) and d.node.expr in declared:
                env, sym = d.node.shape_env, d.node.expr
                env.var_to_range[sym] = ValueRanges(env.var_to_range[sym].lower, declared[sym].upper)
    return edge


def delegation(edge) -> dict:
    """How much of a lowered program XNNPACK runs: delegated subgraphs and nodes, and the ops left
    to ExecuTorch's portable kernels ({op: count}; empty when the whole model is delegated)."""
    from executorch.devtools.backend_debug import get_delegation_info
    info = get_delegation_info(edge.exported_program().graph_module)
    outside = {op: b.non_delegated for op, b in sorted(info.delegation_by_operator.items())
               if b.non_delegated and op not in _BOOKKEEPING}
    return {"subgraphs": info.num_delegated_subgraphs, "delegated_nodes": info.num_delegated_nodes,
            "outside_delegate": outside}


def _save(edge, path: Path) -> None:
    """Write the program; its metadata method holds the checksum placeholder, filled in here."""
    et = edge.to_executorch()
    with open(path, "wb") as f:
        et.write_to_file(f)
    seal_file(path)


def write_pte(fused: nn.Module, tmp: Path, info: dict, x: torch.Tensor) -> dict:
    """Write the fp32 .pte of an inference-form model to `tmp`; returns its delegation summary."""
    meta = with_placeholder({**info, "executorch": dict(PTE_DELEGATE)})
    edge = lower_to_xnnpack(_export_program(xnnpack_ready(fused), x), meta)
    report = delegation(edge)
    _save(edge, tmp)
    return report


def delegation_report(model: nn.Module, x: torch.Tensor,
                      int8_calibration: torch.Tensor | None = None) -> dict:
    """The delegation summary of `model` (fp32, or int8 calibrated on `int8_calibration`) without
    writing a file: for models the classifier export does not take (detection, segmentation)."""
    fused = xnnpack_ready(prepare_for_inference(model, channels_last=False))
    program = _export_program(fused, x)
    if int8_calibration is not None:
        program = _export_program(_pt2e_int8(program, int8_calibration), x)
    return delegation(lower_to_xnnpack(program))


def _pt2e_int8(program, calibration: torch.Tensor, batch: int = 32) -> nn.Module:
    """PT2E int8 with the XNNPACK quantizer: annotate, calibrate (min/max), convert."""
    require("executorch.exir", "ExecuTorch int8")
    import dataclasses
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    config = get_symmetric_quantization_config(is_per_channel=True)
    # Min/max ranges as ONNX Runtime's default recipe (quantize.py), not the histogram observer.
    act = dataclasses.replace(config.input_activation,
                              observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    prepared = prepare_pt2e(program.module(), XNNPACKQuantizer().set_global(config))
    with torch.no_grad():
        for chunk in calibration.split(batch):
            prepared(chunk)
    return convert_pt2e(prepared)


def xnnpack_operators(path: str | os.PathLike, x: torch.Tensor) -> list[list[str]]:
    """The XNNPACK operators one run of the .pte at `path` on `x` executes, as its event tracer
    names them ("Convolution (NHWC, QC8) IGEMM", "Convert (NC)", ...), one list per delegate call."""
    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc
    from executorch.runtime import Runtime, Verification
    program = Runtime.get().load_program(str(path), verification=Verification.Minimal, enable_etdump=True,
                                         debug_buffer_size=1 << 20)
    program.load_method("forward").execute([x.contiguous()])
    with tempfile.TemporaryDirectory(prefix="mobilenets-etdump-") as d:
        program.write_etdump_result_to_file(f"{d}/run.etdp", f"{d}/debug.bin")
        dump = deserialize_from_etdump_flatcc(Path(f"{d}/run.etdp").read_bytes())
    calls, current = [], []
    for run in dump.run_data:
        for event in run.events:
            pe = event.profile_event
            if pe is None:
                continue
            if pe.name == "DELEGATE_CALL":
                calls.append(current)
                current = []
            elif pe.name is None and pe.delegate_debug_id_str:
                current.append(pe.delegate_debug_id_str.rsplit(" #", 1)[0])
    return calls


def xnnpack_float_ops(calls: list[list[str]]) -> dict:
    """The operators of `xnnpack_operators` that run in float, by name ({name: count}): those XNNPACK
    names with a float type, and the untyped ones (Mean, Multiply, ...) between a Convert that
    leaves int8 and the next that enters it. Each delegate call starts on float input."""
    out: dict[str, int] = {}
    for ops in calls:
        floating = True
        for op in ops:
            if op.startswith("Convert"):
                floating = not floating
                continue
            typed = [t for t in ("F32", "F16", "QS8", "QU8", "QC8", "QD8", "X8") if t in op]
            if any(t in ("F32", "F16") for t in typed) or (floating and not typed):
                out[op] = out.get(op, 0) + 1
    return dict(sorted(out.items()))


def quantize_pte(model: nn.Module, meta: dict | None, out: str | os.PathLike,
                 calibration: torch.Tensor, extra_meta: dict | None = None) -> dict:
    """Write the int8 .pte of `model` to `out`, calibrated on `calibration` (preprocessed images
    N×C×H×W). The file is run on the calibration images before it is renamed into place.

    Returns {"out", "calibration_images", "agreement" (top-1 agreement with the fp32 model on the
    calibration images, %), "delegation"}."""
    require("executorch.exir", f"{out}: ExecuTorch int8 export")
    info = export_metadata(model, meta, precision="int8")
    if len(calibration) == 0:
        raise MobileNetsError("calibration set is empty")
    if list(calibration.shape[1:]) != info["input_shape"]:
        raise MobileNetsError(f"calibration images are {list(calibration.shape[1:])}, "
                              f"{info['model']} takes {info['input_shape']}")
    out = check_writable(out)
    info["executorch"] = dict(PTE_DELEGATE)
    info["quantization"] = {"engine": "executorch-xnnpack", "format": "PT2E",
                            "weights": "int8 symmetric per-channel",
                            "activations": "int8 affine per-tensor", "calibration": "minmax",
                            "calibration_images": len(calibration), **(extra_meta or {})}
    fused = xnnpack_ready(prepare_for_inference(model, channels_last=False))
    with atomic_path(out) as tmp:
        try:
            program = _export_program(fused, calibration)
            quantized = _pt2e_int8(program, calibration)
            edge = lower_to_xnnpack(_export_program(quantized, calibration), with_placeholder(info))
            report = delegation(edge)
            _save(edge, tmp)
            got = ExecuTorchBackend(tmp).logits(calibration)
        except MobileNetsError:
            raise
        except Exception as e:  # the exporters raise many types; one line, then no file
            raise MobileNetsError(f"{out}: executorch int8 export failed ({first_line(e)})") from e
        with torch.inference_mode():
            ref = torch.cat([fused(c) for c in calibration.split(64)])
        agreement = 100.0 * (got.argmax(1) == ref.argmax(1)).float().mean().item()
    return {"out": str(out), "calibration_images": len(calibration), "agreement": agreement,
            "delegation": report}


# -- runtime --------------------------------------------------------------------------------------
_LOADED = weakref.WeakSet()   # the live ExecuTorchBackends: programs that hold the pool


def set_executorch_threads(threads: int | None) -> int:
    """Size ExecuTorch's one process-wide thread pool (XNNPACK's workers) before a program is
    loaded; returns its size. Its default is every online CPU (it ignores the process's CPU
    affinity: 2 threads under `taskset -c 0` here), not torch.get_num_threads(), so runs that set
    the thread count for PyTorch and ONNX Runtime must set it here too.

    A loaded XNNPACK program keeps the pool it was loaded with: resizing the pool under it hung or
    crashed (SIGSEGV) the process here after a few hundred calls. So the pool is resized only
    while no program is loaded; `threads=None` takes the pool as it is when one is, else
    torch.get_num_threads(), and another explicit count is refused."""
    from executorch.extension.pybindings import portable_lib
    current = portable_lib._threadpool_get_thread_count()
    if len(_LOADED):
        if threads not in (None, current):
            raise MobileNetsError(f"ExecuTorch's thread pool is process-wide and runs {current} "
                                  f"threads for a loaded program; threads={threads} needs another "
                                  "process (or every loaded program released first)")
        return current
    threads = threads or torch.get_num_threads()
    if current != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return threads


def _check_pte_header(path: Path) -> None:
    """Refuse files that are not whole .pte programs before the runtime parses them: its logger
    aborts the process on some malformed headers (a UnicodeDecodeError inside pybind11)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(40)
    if len(head) < 40 or head[4:6] != b"ET" or head[8:12] != b"eh00":
        raise MobileNetsError(f"{path}: not an ExecuTorch program (no ET/eh00 header)")
    length, program_size, segment_base, segment_size = struct.unpack("<IQQQ", head[12:40])
    end = max(program_size, segment_base + (segment_size if length >= 32 else 0))
    if end > size:
        raise MobileNetsError(f"{path}: truncated ExecuTorch program ({size} bytes, its header "
                              f"describes {end})")


class ExecuTorchBackend:
    """A .pte file from `mobilenets export --format executorch` or `mobilenets quantize --format
    executorch`, on the ExecuTorch runtime with `threads` XNNPACK threads (default: PyTorch's,
    or the pool's size while another program is loaded; see `set_executorch_threads`)."""

    def __init__(self, path: Path, threads: int | None = None):
        runtime = require("executorch.runtime", f"{path}: running an ExecuTorch program")
        path = Path(path)
        if path.is_file() and path.stat().st_size == 0:
            raise MobileNetsError(f"{path}: is empty (0 bytes)")
        _check_pte_header(path)
        check_flat(path)   # before the runtime parses a byte of it
        self.threads = set_executorch_threads(threads)
        try:
            program = runtime.Runtime.get().load_program(str(path))
            names = program.method_names
            text = None
            if PTE_METADATA_METHOD in names:
                text = bytes(program.load_method(PTE_METADATA_METHOD).execute([])[0].numpy())
            self.method = program.load_method("forward")
        except (RuntimeError, ValueError, TypeError) as e:
            raise MobileNetsError(f"{path}: not a loadable ExecuTorch program ({first_line(e)})") from e
        self.program = program   # the method's memory belongs to it
        _LOADED.add(self)
        self.meta = parse_meta(text, path)
        self.max_batch = int(self.meta.get("executorch", {}).get("max_batch", 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.method.execute([c.contiguous()])[0] for c in x.float().split(self.max_batch)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    __call__ = logits
