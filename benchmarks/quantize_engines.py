"""int8 engines head to head: ONNX Runtime static QDQ (what `mobilenets quantize` writes) against
PyTorch's PT2E flow with torchao's X86InductorQuantizer, compiled by inductor.

Both engines quantize the same BN-folded model with the same recipe: int8 symmetric
per-output-channel weights, uint8 asymmetric per-tensor activations with min/max ranges from the
same calibration images (PT2E's default histogram observer is swapped for min/max so that the
engines, not the calibration rules, are compared). Latency: the median over alternating rounds
(each round times every contender in turn, the order reversed every other round), so load that
comes and goes on a shared machine falls on all of them alike. Agreement: top-1 of each form
against the fp32 model on Fashion-MNIST test images, and accuracy when a trained checkpoint is
given.

    python benchmarks/quantize_engines.py                                      # V2 1.0 at 224
    python benchmarks/quantize_engines.py --model runs/fmnist-32/best.safetensors --limit 2000
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mobilenets.deploy.bench import benchmark_model, compile_frozen, cpu_peak, time_runs  # noqa: E402
from mobilenets.datasets.calibration import fashion_mnist, preprocessed  # noqa: E402
from mobilenets.deploy.export import INPUT_NAME, export, ort_session  # noqa: E402
from mobilenets.deploy.fuse import prepare_for_inference  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.deploy.quantize import quantize_onnx  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402

CONTENDERS = ("ort-fp32", "ort-int8", "inductor-fp32", "pt2e-int8")
EVAL_BATCH = 32


def pt2e_int8(fused: torch.nn.Module, calib: torch.Tensor, observer: str = "minmax"):
    """PT2E post-training quantization for x86 + inductor: export, annotate, calibrate, convert."""
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    config = xiq.get_default_x86_inductor_quantization_config()
    if observer == "minmax":
        act = dataclasses.replace(config.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(fused, (calib[:2],), dynamic_shapes=({0: batch},))
    prepared = prepare_pt2e(program.module(), xiq.X86InductorQuantizer().set_global(config))
    with torch.no_grad():
        for chunk in calib.split(32):
            prepared(chunk)
    return convert_pt2e(prepared)


def build(model, meta, calib, names, workdir: Path, threads: int, observer: str):
    """{name: callable on a float batch → logits}, and seconds spent quantizing per engine.
    PyTorch contenders take channels_last batches (`torch_input`), ONNX Runtime NCHW."""
    fused = prepare_for_inference(model, channels_last=False)
    calls, seconds = {}, {}
    if {"ort-fp32", "ort-int8"} & set(names):
        fp32 = workdir / "fp32.onnx"
        export(model, fp32, "onnx", meta, check_inputs=calib[:3])
        sessions = {"ort-fp32": fp32}
        if "ort-int8" in names:
            t = time.perf_counter()
            quantize_onnx(fp32, workdir / "int8.onnx", calib)
            seconds["ort-int8"] = time.perf_counter() - t
            sessions["ort-int8"] = workdir / "int8.onnx"
        for name, path in sessions.items():
            if name in names:
                sess = ort_session(path, threads)
                calls[name] = lambda x, s=sess: torch.from_numpy(s.run(None, {INPUT_NAME: x.numpy()})[0])
    if "inductor-fp32" in names:
        calls["inductor-fp32"] = _no_grad(compile_frozen(prepare_for_inference(model)))
    if "pt2e-int8" in names:
        t = time.perf_counter()
        q = pt2e_int8(fused, calib, observer)
        seconds["pt2e-int8"] = time.perf_counter() - t
        calls["pt2e-int8"] = _no_grad(compile_frozen(q))
    return {n: calls[n] for n in names}, seconds


def _no_grad(fn):
    def call(x):
        with torch.no_grad():
            return fn(x)
    call.channels_last = True
    return call


def torch_input(fn, x: torch.Tensor) -> torch.Tensor:
    """`x` as `fn` takes it: channels_last for PyTorch, which then needs no layout conversion."""
    return x.contiguous(memory_format=torch.channels_last) if getattr(fn, "channels_last", False) else x


def latency(calls: dict, shape, batches, rounds: int, per_round: int, log) -> tuple[list[dict], dict]:
    """Median ms per contender and batch over alternating rounds; first-call (compile) seconds."""
    rows, first_call = [], {}
    for b in batches:
        x = torch.randn(b, *shape)
        xs = {name: torch_input(fn, x) for name, fn in calls.items()}
        for name, fn in calls.items():
            t = time.perf_counter()
            fn(xs[name])   # compiles a static-shape graph for this batch size
            first_call[f"{name}@{b}"] = round(time.perf_counter() - t, 2)
            time_runs(lambda: fn(xs[name]), 0, 3, 0)   # compile workers may still be busy
        times = {n: [] for n in calls}
        order = list(calls)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                times[name] += time_runs(lambda: calls[name](xs[name]), per_round, 0, 1e9)
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(dict(contender=name, precision=name.rsplit("-", 1)[1], batch=b,
                             median_ms=round(med * 1e3, 3), images_per_s=round(b / med, 1),
                             runs=len(ts)))
            log(f"  {name:14s} batch {b:3d}: {med * 1e3:9.2f} ms ({len(ts)} runs)")
    return rows, first_call


def agreement(reference, calls: dict, images, labels) -> dict:
    """Top-1 agreement with `reference` (%), and accuracy (%) when labels are given."""
    def top1(fn):
        out = []
        for chunk in images.split(EVAL_BATCH):
            n = len(chunk)
            if n < EVAL_BATCH:   # compiled graphs are static-shape: pad the last batch
                chunk = torch.cat([chunk, chunk[:1].expand(EVAL_BATCH - n, *chunk.shape[1:])])
            out.append(fn(torch_input(fn, chunk))[:n].argmax(1))
        return torch.cat(out)
    ref = top1(reference)
    result = {"fp32-eager": dict(agreement=100.0, accuracy=_acc(ref, labels))}
    for name, fn in calls.items():
        pred = top1(fn)
        result[name] = dict(agreement=round(100.0 * (pred == ref).float().mean().item(), 2),
                            accuracy=_acc(pred, labels))
    return result


def _acc(pred, labels):
    return None if labels is None else round(100.0 * (pred == labels).float().mean().item(), 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2",
                    help="model name (random weights, BN calibrated as bench does) or a .safetensors checkpoint")
    ap.add_argument("--resolution", type=int, default=None, help="input size (default: the model's)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=10, help="alternating timing rounds")
    ap.add_argument("--per-round", type=int, default=5, help="timed calls per contender per round")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--observer", choices=("minmax", "histogram"), default="minmax",
                    help="PT2E activation observer (ONNX Runtime uses min/max)")
    ap.add_argument("--limit", type=int, default=1000, help="Fashion-MNIST test images for agreement")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    ap.add_argument("--out", default="benchmarks/results/quantize_engines.json")
    args = ap.parse_args()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)   # noqa: E731
    names = [n for n in args.contenders.split(",") if n]
    if bad := set(names) - set(CONTENDERS):
        ap.error(f"--contenders {','.join(sorted(bad))}: allowed: {','.join(CONTENDERS)}")
    tune_allocator()
    peak = cpu_peak()
    threads = args.threads or peak["cores"]
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    model, meta, info, calib = benchmark_model(args.model, args.resolution, args.calib_size, log=log)
    model.eval()
    pre, shape = info["preprocessing"], info["input_shape"]
    trained = args.model.endswith(".safetensors")
    images, labels = fashion_mnist("test")
    images = preprocessed(images[:args.limit], pre)
    labels = labels[:args.limit] if trained and info.get("classes") and len(info["classes"]) == 10 else None
    with tempfile.TemporaryDirectory(prefix="quantize-engines-") as tmp:
        calls, quantize_s = build(model, meta, calib, names, Path(tmp), threads, args.observer)
        rows, first_call = latency(calls, shape, args.batch, args.rounds, args.per_round, log)
        agree = agreement(_no_grad(prepare_for_inference(model)), calls, images, labels)
    import onnxruntime
    import torchao
    machine = dict(peak, threads=threads, load_average_before=load_before,
                   load_average_after=os.getloadavg(), torch=torch.__version__,
                   torchao=torchao.__version__, onnxruntime=onnxruntime.__version__)
    settings = dict(model=args.model, input_shape=shape, calibration_images=len(calib),
                    observer=args.observer, rounds=args.rounds, per_round=args.per_round,
                    eval_images=len(images), accuracy_labels=labels is not None)
    result = dict(settings=settings, machine=machine, quantize_s=quantize_s,
                  first_call_s=first_call, latency=rows, agreement=agree)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    lines = [f"{s['model']} {s['input_shape']}, {m['threads']} threads, load average "
             f"{m['load_average_before'][0]:.1f} → {m['load_average_after'][0]:.1f}; "
             f"top-1 on {s['eval_images']} Fashion-MNIST test images",
             f"{'contender':14s} {'batch':>5s} {'median ms':>10s} {'img/s':>9s} {'first call s':>12s} "
             f"{'agree %':>8s} {'acc %':>6s}"]
    for r in result["latency"]:
        a = result["agreement"][r["contender"]]
        acc = "" if a["accuracy"] is None else f"{a['accuracy']:.2f}"
        lines.append(f"{r['contender']:14s} {r['batch']:5d} {r['median_ms']:10.2f} {r['images_per_s']:9.1f} "
                     f"{result['first_call_s'][r['contender'] + '@' + str(r['batch'])]:12.1f} "
                     f"{a['agreement']:8.2f} {acc:>6s}")
    fp = result["agreement"]["fp32-eager"]["accuracy"]
    if fp is not None:
        lines.append(f"fp32 eager accuracy {fp:.2f} %")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
