"""Phone engines against the desktop ones: eager PyTorch, ONNX Runtime fp32 / int8, ExecuTorch
(XNNPACK) fp32 / int8, OpenVINO fp32 and LiteRT fp32, at batch 1 and 32, with 1 and 2 threads,
with the size of each file and the top-1 agreement of the int8 files with fp32.

Models: MobileNetV2 1.0, V3-Large and V3-Small at 224 px, and the Fashion-MNIST main-job model at
28 px (mobilenet_v2 0.35, small_input, 1 channel, 10 classes): random weights whose batch-norm
statistics come from Fashion-MNIST images at the input size (as `mobilenets bench`), or the
trained file `--fmnist-weights` names, for which the accuracy of every file on the test split is
measured too (`--accuracy`: that alone, no timing). The peer is
ONNX Runtime int8 of torchvision's own mobilenet_v2 graph (V2 at 224 only), quantized with the
same recipe and calibration images. The JSON records /proc/cpuinfo's model name, the fp32 peak
from `bench.cpu_peak`, a large SGEMM's GFLOP/s at each thread count, the load average, and
ExecuTorch's default thread-pool size (it ignores the process's CPU affinity). `--thread-check`
is the short check of ExecuTorch's thread pool against ONNX Runtime behind docs/deploy.md.

Every contender's thread count is set explicitly: PyTorch (torch.set_num_threads), ONNX Runtime
(intra-op threads), ExecuTorch (its process-wide pool, `set_executorch_threads`: resized
only between thread counts, once every program of the previous count is released), OpenVINO
(INFERENCE_NUM_THREADS) and LiteRT (num_threads). Median of the timed runs after warm-up; the
contenders take turns as `mobilenets bench` times them (`bench.time_in_turns`), each turn
after an idle pause that lets the previous contender's spinning threads sleep.

    python benchmarks/mobile_engines.py                       # all models (long: int8 lowering)
    python benchmarks/mobile_engines.py --fmnist-weights runs/fmnist/best.safetensors
    python benchmarks/mobile_engines.py --accuracy --fmnist-weights runs/fmnist/best.safetensors
    python benchmarks/mobile_engines.py --quick               # Fashion-MNIST model, few runs
    python benchmarks/mobile_engines.py --thread-check        # ExecuTorch's pool vs ONNX Runtime
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mobilenets import create_model, load_model  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402
from mobilenets.datasets.calibration import calibration_set, load_images, preprocessed  # noqa: E402
from mobilenets.deploy.bench import (  # noqa: E402
    _madds, calibrate_batchnorm, cpu_peak, time_in_turns, time_runs)
from mobilenets.deploy.export import INPUT_NAME, export, export_metadata, ort_session  # noqa: E402
from mobilenets.deploy.fuse import prepare_for_inference  # noqa: E402
from mobilenets.deploy.quantize import quantize_onnx  # noqa: E402

MODELS = {
    "mobilenet_v2": dict(name="mobilenet_v2", kwargs={}, resolution=224),
    "mobilenet_v3_large": dict(name="mobilenet_v3_large", kwargs={}, resolution=224),
    "mobilenet_v3_small": dict(name="mobilenet_v3_small", kwargs={}, resolution=224),
    "fmnist_v2_28": dict(name="mobilenet_v2", resolution=28,
                         kwargs=dict(width_mult=0.35, small_input=True, in_chans=1, num_classes=10)),
}
FMNIST_PRE = dict(mean=[0.286], std=[0.353], in_chans=1, interpolation="bilinear")
HAS_LITERT = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_litert"))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def sgemm_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """Achieved fp32 GFLOP/s of an n×n×n matrix product in PyTorch with `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = time_runs(lambda: torch.mm(a, b), repeats, 1, 30.0)
    return round(2 * n ** 3 / min(times) / 1e9, 1)


def build(key: str, calib_size: int, log, weights: str | None = None):
    """(model, meta for export, calibration images, trained?) for one entry of MODELS: the
    trained file `weights` for the Fashion-MNIST model when given, else random weights."""
    spec = MODELS[key]
    if weights and key == "fmnist_v2_28":
        model, meta = load_model(weights)
        pre = export_metadata(model, meta)["preprocessing"]
        calib = calibration_set("fashion-mnist", pre, calib_size)
        log(f"{key}: trained weights {weights} ({pre['resolution']} px)")
        return model.eval(), meta, calib, True
    model = create_model(spec["name"], **spec["kwargs"]).eval()
    res = spec["resolution"]
    pre = export_metadata(model)["preprocessing"]
    if spec["kwargs"].get("in_chans") == 1:
        pre.update(FMNIST_PRE)
    pre.update(resolution=res, resize=res)
    calib = calibration_set("fashion-mnist", pre, calib_size)
    log(f"{key}: batch-norm statistics from {len(calib)} Fashion-MNIST images at {res} px")
    calibrate_batchnorm(model, calib)
    return model, {"preprocessing": pre}, calib, False


def accuracy(calls: dict, pre: dict, log) -> dict:
    """Top-1 (%) of every contender on the Fashion-MNIST test split, and each one's difference
    from eager fp32 (points)."""
    images, labels = load_images("fashion-mnist", pre, "test")
    x = preprocessed(images, pre)
    top1 = {}
    for name, (_, fn) in calls.items():
        logits = torch.cat([torch.as_tensor(fn(c)) for c in x.split(500)])
        top1[name] = round(100.0 * (logits.argmax(1) == labels).float().mean().item(), 2)
        log(f"  {name:30s} top-1 {top1[name]:.2f}%")
    return {"test_images": len(x), "top1_pct": top1,
            "delta_vs_eager_points": {k: round(v - top1["eager"], 2) for k, v in top1.items()}}


def make_files(model, meta, calib, workdir: Path, log, peer: bool) -> tuple[dict, dict, dict]:
    """Write every file once: ({name: path}, {name: seconds to make}, extra info)."""
    from mobilenets.deploy.executorch import quantize_pte
    files, seconds, info = {}, {}, {}
    check = calib[:3]

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t, 1)
        log(f"  {name}: {seconds[name]} s")
        return out
    files["onnx-fp32"] = workdir / "fp32.onnx"
    timed("onnx-fp32", lambda: export(model, files["onnx-fp32"], "onnx", meta, check_inputs=check))
    files["onnx-int8"] = workdir / "int8.onnx"
    timed("onnx-int8", lambda: quantize_onnx(files["onnx-fp32"], files["onnx-int8"], calib))
    files["executorch-fp32"] = workdir / "fp32.pte"
    r = timed("executorch-fp32", lambda: export(model, files["executorch-fp32"], "executorch", meta,
                                                check_inputs=check))
    info["executorch-fp32 delegation"] = r["delegation"]
    files["executorch-int8"] = workdir / "int8.pte"
    s = timed("executorch-int8", lambda: quantize_pte(model, meta, files["executorch-int8"], calib))
    info["executorch-int8 delegation"] = s["delegation"]
    info["executorch-int8 agreement_calib_pct"] = round(s["agreement"], 2)
    if HAS_LITERT:
        files["litert-fp32"] = workdir / "fp32.tflite"
        timed("litert-fp32", lambda: export(model, files["litert-fp32"], "tflite", meta,
                                            check_inputs=check))
    if peer:
        import torchvision
        tv = torchvision.models.mobilenet_v2().eval()
        calibrate_batchnorm(tv, calib)
        tv_meta = {"model": "torchvision.models.mobilenet_v2", **meta}
        files["torchvision-onnx-fp32"] = workdir / "tv_fp32.onnx"
        timed("torchvision-onnx-fp32", lambda: export(tv, files["torchvision-onnx-fp32"], "onnx",
                                                      tv_meta, check_inputs=check))
        files["torchvision-onnx-int8"] = workdir / "tv_int8.onnx"
        timed("torchvision-onnx-int8", lambda: quantize_onnx(files["torchvision-onnx-fp32"],
                                                             files["torchvision-onnx-int8"], calib))
    # int8 top-1 agreement with fp32 ONNX on the calibration images (the same images for all)
    ref = ort_session(files["onnx-fp32"], 2).run(None, {INPUT_NAME: calib.numpy()})[0].argmax(1)
    got = ort_session(files["onnx-int8"], 2).run(None, {INPUT_NAME: calib.numpy()})[0].argmax(1)
    info["onnx-int8 agreement_calib_pct"] = round(100.0 * float((ref == got).mean()), 2)
    return files, seconds, info


def runners(model, files: dict, threads: int) -> dict:
    """{contender: (precision, callable on a float batch)} with `threads` threads each."""
    from mobilenets.deploy.backends import OpenVinoBackend
    from mobilenets.deploy.executorch import ExecuTorchBackend
    from mobilenets.deploy.litert import TFLiteBackend
    torch.set_num_threads(threads)
    fused = prepare_for_inference(model)

    def eager(x):
        with torch.inference_mode():
            return fused(x.contiguous(memory_format=torch.channels_last))

    def ort(path):
        sess = ort_session(path, threads)
        return lambda x: sess.run(None, {INPUT_NAME: x.numpy()})[0]
    out = {"eager": ("fp32", eager),
           "onnxruntime": ("fp32", ort(files["onnx-fp32"])),
           "onnxruntime-int8": ("int8", ort(files["onnx-int8"])),
           "executorch": ("fp32", ExecuTorchBackend(files["executorch-fp32"], threads)),
           "executorch-int8": ("int8", ExecuTorchBackend(files["executorch-int8"], threads)),
           "openvino": ("fp32", OpenVinoBackend(files["onnx-fp32"], threads))}
    if "litert-fp32" in files:
        out["litert"] = ("fp32", TFLiteBackend(files["litert-fp32"], threads))
    if "torchvision-onnx-int8" in files:
        out["torchvision-onnxruntime-int8"] = ("int8", ort(files["torchvision-onnx-int8"]))
    return out


def latency(calls: dict, shape, batch: int, rounds: int, per_round: int) -> dict:
    """Median seconds per call for each contender, the contenders taking turns as `bench` times
    them (`bench.time_in_turns`: each turn after an idle pause and untimed calls)."""
    x = torch.randn(batch, *shape)
    names = list(calls)
    fns = [lambda fn=calls[name][1]: fn(x) for name in names]
    for fn in fns:
        time_runs(fn, 0, 2, 0)   # warm-up (the ExecuTorch/ORT first calls plan memory)
    times = time_in_turns(fns, rounds * per_round, float("inf"), rounds)
    return {name: (statistics.median(ts), len(ts)) for name, ts in zip(names, times)}


def executorch_default_threads() -> int:
    """The ExecuTorch pool's size before anyone sets it (a fresh process: the pool is global)."""
    import subprocess
    code = ("from executorch.extension.pybindings import portable_lib as p; "
            "print(p._threadpool_get_thread_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1


THREAD_CHILD = """
import json, statistics, sys, torch
from executorch.extension.pybindings import portable_lib
from mobilenets.deploy.bench import time_runs
from executorch.runtime import Runtime
from mobilenets.deploy.export import INPUT_NAME, ort_session
pte, onnx, pool, ort_threads, shape, repeats = json.loads(sys.argv[1])
torch.set_num_threads(ort_threads)
default = portable_lib._threadpool_get_thread_count()
if pool:
    portable_lib._unsafe_reset_threadpool(pool)
# The runtime directly, not ExecuTorchBackend: that one sizes the pool, and pool 0 means "leave it".
program = Runtime.get().load_program(pte)
method = program.load_method("forward")
et = lambda x: method.execute([x])
sess = ort_session(onnx, ort_threads)
out = dict(default_pool=default, pool=portable_lib._threadpool_get_thread_count())
for batch in (1, 32):
    x = torch.randn(batch, *shape)
    for name, fn in (("executorch", lambda: et(x)), ("onnxruntime", lambda: sess.run(None, {INPUT_NAME: x.numpy()}))):
        out[f"{name}_b{batch}_ms"] = round(1e3 * statistics.median(time_runs(fn, repeats, 3, 1e9)), 3)
print(json.dumps(out))
"""


def thread_check(key: str, repeats: int, log) -> dict:
    """ExecuTorch fp32 against ONNX Runtime fp32 on one model, each setting in a fresh process
    (the pool is process-wide): the pool left at its default, set to 1 and to 2, and left at its
    default under `taskset -c 0` (one core allowed) with ONNX Runtime on 1 thread."""
    import subprocess
    model, meta, calib, _ = build(key, 32, log)
    shape = export_metadata(model, meta)["input_shape"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobile-threads-") as tmp:
        pte, onnx = Path(tmp) / "fp32.pte", Path(tmp) / "fp32.onnx"
        export(model, onnx, "onnx", meta, check_inputs=calib[:3])
        export(model, pte, "executorch", meta, check_inputs=calib[:3])
        settings = [("default pool, ORT 1 thread", [], 0, 1), ("pool 1, ORT 1 thread", [], 1, 1),
                    ("pool 2, ORT 2 threads", [], 2, 2),
                    ("taskset -c 0: default pool, ORT 1 thread", ["taskset", "-c", "0"], 0, 1)]
        for label, prefix, pool, ort_threads in settings:
            arg = json.dumps([str(pte), str(onnx), pool, ort_threads, shape, repeats])
            done = subprocess.run(prefix + [sys.executable, "-c", THREAD_CHILD, arg], capture_output=True,
                                  text=True, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                rows.append(dict(setting=label, error=(done.stderr.strip().splitlines() or ["?"])[-1]))
            else:
                rows.append(dict(setting=label, **json.loads(done.stdout.strip().splitlines()[-1])))
            log(f"  {json.dumps(rows[-1])}")
    return {"model": key, "repeats": repeats, "load_average": os.getloadavg(), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--fmnist-weights", default=None,
                    help="trained .safetensors of the Fashion-MNIST model (else random weights); "
                         "its files' test accuracy is measured too")
    ap.add_argument("--accuracy", action="store_true",
                    help="only the test accuracy of the Fashion-MNIST model's files (needs "
                         "--fmnist-weights), no timing")
    ap.add_argument("--quick", action="store_true",
                    help="the Fashion-MNIST model only, 2 rounds of 2 runs, 32 calibration images")
    ap.add_argument("--thread-check", action="store_true",
                    help="ExecuTorch's thread pool against ONNX Runtime on one model (the first "
                         "of --models; default the Fashion-MNIST one), 20 runs each")
    ap.add_argument("--out", default=None,
                    help="default: benchmarks/results/mobile_engines[_quick|_accuracy|_threads].json")
    args = ap.parse_args()
    if args.accuracy and not args.fmnist_weights:
        ap.error("--accuracy needs --fmnist-weights")
    if args.quick:
        args.models, args.rounds, args.per_round, args.calib_size = ["fmnist_v2_28"], 2, 2, 32
    if args.accuracy:
        args.models = ["fmnist_v2_28"]
    mode = "_quick" if args.quick else "_accuracy" if args.accuracy else \
        "_threads" if args.thread_check else ""
    out_path = args.out or f"benchmarks/results/mobile_engines{mode}.json"
    tune_allocator()

    def log(*a):
        print(*a, file=sys.stderr, flush=True)
    if args.thread_check:
        key = args.models[0] if args.models != list(MODELS) else "fmnist_v2_28"
        result = thread_check(key, 20, log)
        atomic_write_text(out_path, json.dumps(result, indent=1) + "\n")
        print(f"wrote {out_path}")
        return 0
    machine = dict(cpu_model=cpu_model(), peak=cpu_peak(), torch=torch.__version__,
                   executorch_default_threads=executorch_default_threads(),
                   affinity_cores=len(os.sched_getaffinity(0)),
                   sgemm_4096_gflops={} if args.accuracy else
                   {t: sgemm_gflops(t) for t in args.threads},
                   litert=HAS_LITERT, quick=args.quick)
    log(f"machine: {json.dumps(machine)}")
    results = {"machine": machine, "models": []}
    for key in args.models:
        model, meta, calib, trained = build(key, args.calib_size, log, args.fmnist_weights)
        shape = export_metadata(model, meta)["input_shape"]
        entry = {"model": key, **MODELS[key], "resolution": shape[-1],
                 "weights": args.fmnist_weights if trained else "random, BN statistics from Fashion-MNIST",
                 "madds": _madds(model, shape[-1]), "rows": []}
        with tempfile.TemporaryDirectory(prefix="mobile-engines-") as tmp:
            log(f"{key}: writing the files")
            files, seconds, info = make_files(model, meta, calib, Path(tmp), log,
                                              peer=key == "mobilenet_v2")
            entry.update(file_mib={k: round(os.path.getsize(p) / 2**20, 3) for k, p in files.items()},
                         seconds_to_make=seconds, **info)
            calls = None
            for threads in args.threads:
                # ExecuTorch's pool is resized only while no program holds it (deploy/executorch.py)
                calls = None
                gc.collect()
                calls = runners(model, files, threads)
                if trained and "accuracy" not in entry:
                    log(f"{key}: test accuracy of every file")
                    entry["accuracy"] = accuracy(calls, meta["preprocessing"], log)
                if args.accuracy:
                    break
                for batch in args.batch:
                    for name, (med, n) in latency(calls, shape, batch, args.rounds,
                                                  args.per_round).items():
                        entry["rows"].append(dict(backend=name, precision=calls[name][0],
                                                  threads=threads, batch=batch,
                                                  median_ms=round(med * 1e3, 3),
                                                  images_per_s=round(batch / med, 1), runs=n))
                        log(f"  {name:30s} {threads} thr batch {batch:3d}: {med * 1e3:9.2f} ms")
            calls = None
        entry["load_average"] = os.getloadavg()
        results["models"].append(entry)
        atomic_write_text(out_path, json.dumps(results, indent=1) + "\n")
        print(format_table(entry))
    print(f"wrote {out_path}")
    return 0


def format_table(entry: dict) -> str:
    lines = [f"## {entry['model']} ({entry['resolution']} px); load average "
             f"{entry['load_average'][0]:.2f}",
             f"{'backend':30s} {'prec':5s} {'thr':>3s} {'batch':>5s} {'median ms':>10s} {'img/s':>9s}"]
    for r in entry["rows"]:
        lines.append(f"{r['backend']:30s} {r['precision']:5s} {r['threads']:3d} {r['batch']:5d} "
                     f"{r['median_ms']:10.2f} {r['images_per_s']:9.1f}")
    lines.append("files (MiB): " + ", ".join(f"{k} {v}" for k, v in entry["file_mib"].items()))
    if "accuracy" in entry:
        acc = entry["accuracy"]
        lines.append(f"top-1 on {acc['test_images']} test images (points from eager): " + ", ".join(
            f"{k} {v:.2f}% ({acc['delta_vs_eager_points'][k]:+.2f})" for k, v in acc["top1_pct"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
