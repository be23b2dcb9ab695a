"""`mobilenets bench`: latency and throughput of a model's inference forms and of the peers, as
achieved GFLOP/s and as a fraction of the CPU's fp32 peak.

Peak fp32 FLOP/s = cores × clock × FMA pipes × (FMA datapath bits / 32) × 2 (an FMA is a
multiply and an add). Cores, clock, vendor, family and vector flags come from /proc/cpuinfo;
the FMA datapath and pipe count are not in /proc/cpuinfo, so they come from a small table per
micro-architecture (`FMA_UNITS`). This project's Zen 4: 2 cores × 2.6 GHz × 2 pipes × 256/32 × 2 =
166 GFLOP/s (Zen 4 runs AVX-512 double-pumped on its two 256-bit FMA pipes, so AVX-512 doubles
nothing). Achieved GFLOP/s = 2 × multiply-adds (from `mobilenets.profile`) × batch / time.

Every contender runs in this process with the same settings: glibc allocator tuning
(`runtime.tune_allocator`), the same intra-op thread count for PyTorch and ONNX Runtime,
channels_last inputs for eager PyTorch, warm-up before timing, median of the timed runs.
"""
from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..core.errors import MobileNetsError
from ..core.machine import cpuinfo_field, read_cpuinfo
from .export import INPUT_NAME, export, export_metadata, onnx_metadata, ort_session, resolve_model
from ..datasets.calibration import calibration_set
from .backends import BACKENDS as FILE_BACKENDS, OpenVinoBackend
from .fuse import prepare_for_inference
from .openvino import quantize_openvino
from .quantize import quantize_onnx
from ..models.mobilenet import create_model, model_defaults
from ..models.profile import profile

BACKENDS = ("eager", "compiled", "onnxruntime", "int8", "executorch", "executorch-int8",
            "openvino", "openvino-int8", "litert")   # from executorch on: the 'mobile' extra
PHONE_FILES = {".pte": "executorch", ".tflite": "litert"}   # a file benched alone: its backend
PEERS = ("torchvision", "timm")
ROUNDS = 5   # turns each contender takes per batch size
# Before each turn: idle seconds, then untimed calls. A runtime's worker threads spin-wait for
# work after a call; timed while another contender's threads still spun, ONNX Runtime with 2
# threads on 2 cores ran 30-75% slower, by position in the order, not by graph.
SETTLE_S = 0.25
WARMUP_PER_TURN = 3
# (vendor, cpu family) → (FMA pipes per core, FMA datapath bits); family numbers are decimal.
FMA_UNITS = {
    ("AuthenticAMD", 23): (2, 256),   # Zen, Zen 2 (Zen 1 splits 256-bit ops, close enough)
    ("AuthenticAMD", 25): (2, 256),   # Zen 3, Zen 4 (AVX-512 double-pumped)
    ("AuthenticAMD", 26): (2, 512),   # Zen 5
}


def cpu_peak(cpuinfo: str | None = None, cores: int | None = None) -> dict:
    """The machine's fp32 peak and the figures it is computed from."""
    text = read_cpuinfo(cpuinfo)

    def field(name):
        return cpuinfo_field(text, name)
    flags = set(field("flags").split())
    vendor = field("vendor_id")
    family = int(field("cpu family") or 0)
    mhz = max((float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)), default=0.0)
    cores = cores or len(os.sched_getaffinity(0))
    if (vendor, family) in FMA_UNITS:
        pipes, bits = FMA_UNITS[(vendor, family)]
    elif "avx512f" in flags:
        pipes, bits = 2, 512           # Xeon Scalable with two AVX-512 FMA units
    elif "avx2" in flags and "fma" in flags:
        pipes, bits = 2, 256
    else:
        pipes, bits = 1, 128
    flops_per_cycle = pipes * bits // 32 * 2
    return dict(vendor=vendor, family=family, cores=cores, clock_ghz=mhz / 1000,
                fma_pipes=pipes, fma_bits=bits, flops_per_cycle=flops_per_cycle,
                gflops=cores * mhz / 1000 * flops_per_cycle,
                formula=f"{cores} cores × {mhz / 1000:.3f} GHz × {pipes} FMA pipes × "
                        f"{bits}/32 lanes × 2")


def time_runs(fn, repeats: int, warmup: int, budget_s: float) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then up to `repeats` timed calls within budget."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def time_in_turns(calls, runs: int, budget_s: float, rounds: int = ROUNDS,
                  settle_s: float = SETTLE_S, warmup: int = WARMUP_PER_TURN) -> list[list[float]]:
    """Seconds per call of each of `calls`, the calls taking turns round by round, so load that
    comes and goes and the order they run in fall on all alike (timed one after another, the same
    ONNX graph once differed by 6% here). Each turn starts after `settle_s` idle seconds and
    `warmup` untimed calls, so no contender is timed while the previous one's threads spin."""
    rounds = min(rounds, runs)
    times: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for i, call in enumerate(calls):
            time.sleep(settle_s)
            times[i] += time_runs(call, runs // rounds + (r < runs % rounds), warmup, budget_s / rounds)
    return times


def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, batch: int = 16) -> None:
    """Replace random-init BN statistics by the statistics of real images (cumulative average),
    so a model without trained weights still computes activations in a realistic range."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i:i + batch])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


class Contender:
    """One backend to time: name, precision, MAdds per image, and a call on a given batch."""

    def __init__(self, backend: str, precision: str, madds: int, make_call):
        self.backend, self.precision, self.madds, self.make_call = backend, precision, madds, make_call


def _torch_call(module, channels_last=True):
    def make(x):
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x

        def call():
            with torch.inference_mode():
                module(x)
        return call
    return make


def _ort_call(path, threads):
    sess = ort_session(path, threads)

    def make(x):
        arr = x.numpy()
        return lambda: sess.run(None, {INPUT_NAME: arr})
    return make


def compile_frozen(module: torch.nn.Module):
    """`torch.compile` (inductor) with freezing, static shapes: one graph per batch size."""
    import torch._inductor.config as inductor_config
    # Freezing lets inductor constant-fold the (already BN-folded) weights and prepack them for
    # oneDNN; it is off by default.
    inductor_config.freezing = True
    return torch.compile(module, dynamic=False)


def _compiled_call(fused):
    return _torch_call(compile_frozen(fused))


def benchmark_model(spec: str | nn.Module, resolution: int | None = None, calib_size: int = 64,
                    want_calib: bool = True, log=print):
    """The model bench measures for `spec`: (model, meta for `export`, export info, calibration
    images or None). A checkpoint keeps its weights; a model name or a model object gets random
    weights' BN statistics from `calib_size` Fashion-MNIST images at the input size (always drawn
    then).
    """
    model, ckpt_meta = (spec.eval(), {}) if isinstance(spec, nn.Module) else resolve_model(spec)
    name = getattr(model, "model_name", type(model).__name__)
    info = export_metadata(model, ckpt_meta)
    if resolution:
        info["preprocessing"].update(resolution=resolution, resize=resolution)
        info["input_shape"][-2:] = [resolution, resolution]
    pre = info["preprocessing"]
    need_calib = not ckpt_meta or want_calib
    calib = calibration_set("fashion-mnist", pre, calib_size) if need_calib else None
    if not ckpt_meta:
        log(f"calibrating batch-norm statistics of random-weight {name} on {len(calib)} "
            f"Fashion-MNIST images at {pre['resolution']} px")
        calibrate_batchnorm(model, calib)
    meta = {**ckpt_meta, "preprocessing": pre} if ckpt_meta else {"preprocessing": pre}
    return model, meta, info, calib


def contenders(spec: str | nn.Module, backends: list[str], vs: list[str], workdir: Path, threads: int,
               resolution: int | None = None, calib_size: int = 64, log=print) -> tuple[list[Contender], dict]:
    """Build every contender for `spec` (model name, .safetensors, .onnx, .pte or .tflite file,
    or a model)."""
    if isinstance(spec, str) and spec.endswith(".onnx"):
        meta = onnx_metadata(spec)
        ref = create_model(meta["model"], **meta.get("model_kwargs", {}))
        madds = _madds(ref, meta["input_shape"][-1])
        return [Contender("onnxruntime", meta.get("precision", "fp32"), madds,
                          _ort_call(spec, threads))], meta
    if isinstance(spec, str) and Path(spec).suffix in PHONE_FILES:
        return _phone_file_contender(Path(spec), threads)
    # A peer gets its BN statistics from the same images as ours (see _peer_contenders).
    want_calib = bool({"int8", "executorch-int8", "openvino-int8"} & set(backends)) or bool(vs)
    model, meta, info, calib = benchmark_model(spec, resolution, calib_size, want_calib, log)
    res = info["preprocessing"]["resolution"]
    madds = _madds(model, res)
    out: list[Contender] = []
    fused = prepare_for_inference(model)
    if "eager" in backends:
        out.append(Contender("eager", "fp32", madds, _torch_call(fused)))
    if "compiled" in backends:
        out.append(Contender("compiled", "fp32", madds, _compiled_call(fused)))
    if {"onnxruntime", "int8", "openvino", "openvino-int8"} & set(backends):
        fp32 = workdir / "fp32.onnx"
        log(f"exporting {getattr(model, 'model_name', 'the model')} to ONNX")
        # Checked on real images: they keep the random-weight model in the range its BN
        # statistics came from, where its activations bend (see export.EXPORT_RTOL).
        export(model, fp32, "onnx", meta, check_inputs=None if calib is None else calib[:3])
        if "onnxruntime" in backends:
            out.append(Contender("onnxruntime", "fp32", madds, _ort_call(fp32, threads)))
        if "int8" in backends:
            log(f"quantizing to int8 with {len(calib)} calibration images")
            q = workdir / "int8.onnx"
            quantize_onnx(fp32, q, calib)
            out.append(Contender("int8", "int8", madds, _ort_call(q, threads)))
        if "openvino" in backends:
            out.append(Contender("openvino", "fp32", madds, _backend_call(OpenVinoBackend(fp32, threads))))
        if "openvino-int8" in backends:
            log(f"quantizing to OpenVINO int8 (NNCF) with {len(calib)} calibration images")
            q = quantize_openvino(fp32, workdir / "openvino_int8.onnx", calib)
            out.append(Contender("openvino-int8", "int8", madds, _backend_call(OpenVinoBackend(q, threads))))
    out += _phone_contenders(model, meta, calib, backends, workdir, threads, madds, log)
    for peer in vs:
        out += _peer_contenders(peer, model, res, workdir, threads, calib)
    return out, info


def _backend_call(backend):
    def make(x):
        x = x.contiguous()
        return lambda: backend(x)
    return make


def _phone_contenders(model, meta: dict, calib: torch.Tensor | None, backends, workdir: Path,
                      threads: int, madds: int, log) -> list[Contender]:
    """The ExecuTorch (fp32, int8) and LiteRT files of `model`, each checked as it is written."""
    from .executorch import ExecuTorchBackend, quantize_pte
    from .litert import TFLiteBackend
    check = None if calib is None else calib[:3]
    out = []
    if "executorch" in backends:
        log("exporting to ExecuTorch (XNNPACK)")
        export(model, workdir / "fp32.pte", "executorch", meta, check_inputs=check)
        out.append(Contender("executorch", "fp32", madds,
                             _backend_call(ExecuTorchBackend(workdir / "fp32.pte", threads))))
    if "executorch-int8" in backends:
        log(f"quantizing to ExecuTorch int8 with {len(calib)} calibration images")
        quantize_pte(model, meta, workdir / "int8.pte", calib)
        out.append(Contender("executorch-int8", "int8", madds,
                             _backend_call(ExecuTorchBackend(workdir / "int8.pte", threads))))
    if "litert" in backends:
        log("converting to LiteRT")
        export(model, workdir / "fp32.tflite", "tflite", meta, check_inputs=check)
        out.append(Contender("litert", "fp32", madds,
                             _backend_call(TFLiteBackend(workdir / "fp32.tflite", threads))))
    return out


def _phone_file_contender(path: Path, threads: int) -> tuple[list[Contender], dict]:
    """A .pte or .tflite file benched on its own runtime."""
    backend = FILE_BACKENDS[path.suffix](path, threads)
    meta = backend.meta
    madds = _madds(create_model(meta["model"], **meta.get("model_kwargs", {})), meta["input_shape"][-1])
    return [Contender(PHONE_FILES[path.suffix], meta.get("precision", "fp32"), madds,
                      _backend_call(backend))], meta


def _madds(model, res: int) -> int:
    """Multiply-adds per image. Profiled on the BN-folded copy: the same convolutions, and no
    batch norm to refuse the profiler's batch of one where the last feature map is 1×1."""
    return profile(prepare_for_inference(model, channels_last=False), res)["madds"]


TORCHVISION_PEERS = {"mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3_large",
                     "mobilenet_v3_small": "mobilenet_v3_small"}
# timm spells our family names without the underscore before the version and a width as `_NNN`.
TIMM_FAMILIES = {"mobilenet_v1": "mobilenetv1", "mobilenet_v2": "mobilenetv2",
                 "mobilenet_v3_large": "mobilenetv3_large", "mobilenet_v3_small": "mobilenetv3_small"}


def _width(model) -> float:
    name = getattr(model, "model_name", "")
    return (getattr(model, "model_kwargs", {}) or {}).get(
        "width_mult", model_defaults(name).get("width_mult", 1.0) if name else 1.0)


def _peer_model(peer: str, model) -> nn.Module | None:
    """The peer library's build of the same architecture with random weights, or None where the
    peer has no such model (torchvision: no V1 or V4, V3 only at width 1.0)."""
    if peer not in PEERS:
        raise MobileNetsError(f"--vs {peer!r} is not one of {', '.join(PEERS)}")
    kwargs = getattr(model, "model_kwargs", {}) or {}
    if kwargs.get("small_input") or kwargs.get("in_chans", 3) != 3:
        return None   # ImageNet-shaped peers only
    if peer == "torchvision":
        import torchvision
        tv_name, width = TORCHVISION_PEERS.get(model.arch.family), _width(model)
        if tv_name is None or (width != 1.0 and tv_name != "mobilenet_v2"):
            return None
        kw = {"width_mult": width} if tv_name == "mobilenet_v2" else {}
        return getattr(torchvision.models, tv_name)(**kw)
    else:
        import timm
        name = getattr(model, "model_name", "")
        if name.startswith("mobilenet_v4_"):
            timm_name = name.replace("mobilenet_v4_", "mobilenetv4_")
        elif model.arch.family in TIMM_FAMILIES:
            timm_name = f"{TIMM_FAMILIES[model.arch.family]}_{round(_width(model) * 100):03d}"
        else:
            return None
        return timm.create_model(timm_name) if timm.is_model(timm_name) else None


def _peer_contenders(peer: str, model, res: int, workdir: Path, threads: int,
                     calib: torch.Tensor) -> list[Contender]:
    """The peer's model timed eager (channels_last, like ours) and in ONNX Runtime, its BN
    statistics drawn from the images that calibrated ours."""
    theirs = _peer_model(peer, model)
    if theirs is None:
        return []
    # Random-init BN (mean 0, variance 1) folds into convolutions without bias, which ONNX
    # Runtime then skips: a graph lighter than any trained model's, ours included.
    calibrate_batchnorm(theirs, calib)
    theirs.pretrained_cfg = {"in_chans": 3}
    madds = profile(theirs, res)["madds"]
    out = [Contender(f"{peer}-eager", "fp32", madds,
                     _torch_call(theirs.to(memory_format=torch.channels_last)))]
    path = workdir / f"{peer}.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(theirs, (torch.randn(2, 3, res, res),), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                      external_data=False, verbose=False)
    out.append(Contender(f"{peer}-onnxruntime", "fp32", madds, _ort_call(path, threads)))
    return out


def run_bench(spec: str, batches=(1, 32), backends=("eager", "onnxruntime", "int8"), vs=(),
              threads: int | None = None, repeats: int = 30, budget_s: float = 20.0,
              resolution: int | None = None, log=print) -> tuple[list[dict], dict]:
    """Time every contender at every batch size: (rows as in the --json contract, machine info).
    Call `mobilenets.tune_allocator()` first for eager numbers like the CLI's."""
    log = log or (lambda *a: None)
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise MobileNetsError(f"--backends {','.join(bad)}: allowed: {', '.join(BACKENDS)}")
    if any(not isinstance(b, int) or b < 1 for b in batches):
        raise MobileNetsError(f"--batch {batches}: allowed: integers >= 1")
    peak = cpu_peak()
    threads = threads or peak["cores"]
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        cands, info = contenders(spec, list(backends), list(vs), Path(tmp), threads,
                                 resolution=resolution, log=log)
        shape = info["input_shape"]
        for b in batches:
            x = torch.randn(b, *shape)
            calls = [c.make_call(x) for c in cands]
            for c, call in zip(cands, calls):
                # The first compiled calls compile, and inductor's worker processes keep the CPU
                # busy a while after: calls right after compiling were 18× slower once here
                # (load may explain it too), so they get a longer warm-up.
                time_runs(call, 0, 2 if c.backend != "compiled" else 10, 0)
            times = time_in_turns(calls, repeats if b < 8 else max(5, repeats // 3), budget_s)
            for c, t in zip(cands, times):
                med = statistics.median(t)
                gflops = 2 * c.madds * b / med / 1e9
                rows.append(dict(backend=c.backend, precision=c.precision, batch=b,
                                 median_ms=round(med * 1e3, 3), images_per_s=round(b / med, 2),
                                 gflops_per_s=round(gflops, 2),
                                 peak_fraction=round(gflops / peak["gflops"], 4)))
                log(f"  {c.backend:24s} batch {b:3d}: {med * 1e3:8.2f} ms ({len(t)} runs)")
        order = {c.backend: i for i, c in enumerate(cands)}
        rows.sort(key=lambda r: (order[r["backend"]], r["batch"]))
    machine = dict(peak, threads=threads, load_average=os.getloadavg(), torch=torch.__version__,
                   model=spec, input_shape=shape)
    return rows, machine


def format_table(rows: list[dict], machine: dict) -> str:
    lines = [f"fp32 peak {machine['gflops']:.0f} GFLOP/s = {machine['formula']}; "
             f"{machine['threads']} threads; load average {machine['load_average'][0]:.2f}",
             f"{'backend':24s} {'prec':5s} {'batch':>5s} {'median ms':>10s} {'img/s':>9s} "
             f"{'GFLOP/s':>8s} {'of peak':>8s}"]
    for r in rows:
        lines.append(f"{r['backend']:24s} {r['precision']:5s} {r['batch']:5d} {r['median_ms']:10.2f} "
                     f"{r['images_per_s']:9.1f} {r['gflops_per_s']:8.1f} {r['peak_fraction']:8.1%}")
    return "\n".join(lines)
