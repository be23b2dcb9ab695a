"""int8 against fp32 per engine and network, on this CPU (VNNI recorded). On ONNX Runtime: each
int8 file (`quantize_onnx`, h-swish and squeeze-excite kept in int8) against ONNX Runtime's own
`quantize_static` on the same float graph as exported. On OpenVINO: `quantize_openvino` (NNCF with
the library's recipe) against NNCF's defaults on the same graph. On ExecuTorch/XNNPACK:
`quantize_pte` against the XNNPACKQuantizer flow of ExecuTorch's documentation (default
symmetric per-channel config, PT2E, XNNPACK partitioner) on torchvision's model of the same network
(timm's for V4), BN calibrated on the same images. Each beside the fp32 file on the same engine,
timed in settled turns in one run. Models have random weights with BN statistics calibrated on
the input images, so activations are in a realistic range; logit error is the mean |int8 − fp32|
(absolute, and over mean |fp32|).

    python benchmarks/int8_limit.py [--engines onnxruntime,openvino,executorch] [--out F]   # default out: benchmarks/results/int8_limit.json
    python benchmarks/int8_limit.py --no-timing --out benchmarks/results/int8_float_ops.json   # no timing
        [--models mobilenet_v3_small_100 --resolution 32]
    python benchmarks/int8_limit.py --quick    # two models, 64 px, a smoke test
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402
from mobilenets.deploy.backends import compile_for_openvino  # noqa: E402
from mobilenets.deploy.bench import calibrate_batchnorm, cpu_peak, time_in_turns  # noqa: E402
from mobilenets.deploy.executorch import (_export_program, delegation, lower_to_xnnpack,  # noqa: E402
                                          quantize_pte, set_executorch_threads, xnnpack_float_ops,
                                          xnnpack_operators)
from mobilenets.deploy.export import INPUT_NAME, export, ort_session  # noqa: E402
from mobilenets.deploy.openvino import float_ops as openvino_float_ops  # noqa: E402
from mobilenets.deploy.openvino import int8_share, quantize_openvino  # noqa: E402
from mobilenets.deploy.qdq_rewrite import float_islands  # noqa: E402
from mobilenets.deploy.quantize import _Reader, cpu_has_vnni, quantize_onnx  # noqa: E402
from mobilenets.models.mobilenet import create_model  # noqa: E402

MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "mobilenet_v3_small_100",
          "mobilenet_v4_conv_small_100", "mobilenet_v4_conv_medium_100")
SETTINGS = ((1, 1), (32, 2))   # (batch, threads)
ENGINES = ("onnxruntime", "openvino", "executorch")
PEER = {"onnxruntime": "ort-quantize_static", "openvino": "nncf-defaults",
        "executorch": "xnnpackquantizer-torchvision"}
# The same network as a user would take it from torchvision (timm for V4) for the ExecuTorch peer.
UPSTREAM = {"mobilenet_v2_100": ("torchvision", "mobilenet_v2"),
            "mobilenet_v3_large_100": ("torchvision", "mobilenet_v3_large"),
            "mobilenet_v3_small_100": ("torchvision", "mobilenet_v3_small"),
            "mobilenet_v4_conv_small_100": ("timm", "mobilenetv4_conv_small"),
            "mobilenet_v4_conv_medium_100": ("timm", "mobilenetv4_conv_medium")}


def plain_quantize_static(fp32: Path, out: Path, calib: torch.Tensor) -> None:
    """What a user gets from ONNX Runtime's quantizer on the exported graph, same recipe."""
    from onnxruntime.quantization import QuantType, quantize_static
    quantize_static(str(fp32), str(out), _Reader(calib), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True})


def nncf_defaults(fp32: Path, out: Path, calib: torch.Tensor) -> None:
    """What a user gets from NNCF's `quantize` with its defaults on the exported graph."""
    import nncf
    import onnx
    dataset = nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))], lambda x: {INPUT_NAME: x})
    proto = nncf.quantize(onnx.load(str(fp32)), dataset, subset_size=len(calib))
    onnx.save(proto, str(out))


def upstream_model(name: str, images: torch.Tensor) -> torch.nn.Module:
    """torchvision's (or timm's) model of the network, random weights, BN calibrated on `images`."""
    lib, upstream = UPSTREAM[name]
    torch.manual_seed(0)
    if lib == "torchvision":
        import torchvision
        model = getattr(torchvision.models, upstream)()
    else:
        import timm
        model = timm.create_model(upstream, pretrained=False)
    calibrate_batchnorm(model, images)
    return model.eval()


def xnnpack_quantizer_pte(model: torch.nn.Module, out: Path, calib: torch.Tensor) -> dict:
    """ExecuTorch's documented int8 flow: XNNPACKQuantizer with its symmetric per-channel config,
    prepare/calibrate/convert (PT2E), lowered with the XNNPACK partitioner. The file gets a dynamic
    batch dimension (as `mobilenets export` writes) so that one file serves batch 1 and batch 32.
    Returns its delegation summary (`delegation`)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(_export_program(model, calib).module(), quantizer)
    with torch.no_grad():
        for chunk in calib.split(8):
            prepared(chunk)
    edge = lower_to_xnnpack(_export_program(convert_pt2e(prepared), calib))
    with open(out, "wb") as f:
        edge.to_executorch().write_to_file(f)
    return delegation(edge)


class _Session:
    """One file on one engine: `run(x) -> logits` for numpy batches."""

    def __init__(self, engine: str, path: Path, threads: int):
        if engine == "executorch":   # the thread pool is sized per setting, before any load
            from executorch.runtime import Runtime
            self.program = Runtime.get().load_program(str(path))   # owns the method's memory
            method = self.program.load_method("forward")
            self.run = lambda x: method.execute([torch.from_numpy(x)])[0].numpy()
        elif engine == "onnxruntime":
            sess = ort_session(path, threads)
            self.run = lambda x: sess.run(None, {INPUT_NAME: x})[0]
        else:  # the peer's file has no mobilenets metadata of its own: compile it as the backend does
            compiled = compile_for_openvino(path, threads)
            request = compiled.create_infer_request()
            self.run = lambda x: request.infer([x], share_inputs=True)[0]


def run_model(name: str, engine: str, res: int, calib_n: int, settings, runs: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(calib_n + 8, 3, res, res)
    calibrate_batchnorm(model, images)
    pre = dict(resolution=res, resize=res, mean=[0.0], std=[1.0], in_chans=3, interpolation="bilinear")
    peer = PEER[engine]
    suffix = ".pte" if engine == "executorch" else ".onnx"
    files = {"fp32": workdir / f"{name}.fp32{suffix}", "int8": workdir / f"{name}.{engine}.int8{suffix}",
             peer: workdir / f"{name}.{engine}.peer{suffix}"}
    started = time.perf_counter()
    if not files["fp32"].exists():
        export(model, files["fp32"], "executorch" if engine == "executorch" else "onnx", {"preprocessing": pre},
               check_inputs=images[:3])
    calib = images[:calib_n]
    held = images[calib_n:]
    peer_ref = None   # the peer's own fp32 model, where it is another network than ours
    if engine == "onnxruntime":
        quantize_onnx(files["fp32"], files["int8"], calib, reduce_range=not cpu_has_vnni())
        plain_quantize_static(files["fp32"], files[peer], calib)
        float_ops = {k: float_islands(onnx.load(str(files[k]))) for k in ("int8", peer)}
    elif engine == "openvino":
        quantize_openvino(files["fp32"], files["int8"], calib)
        nncf_defaults(files["fp32"], files[peer], calib)
        float_ops = {k: openvino_float_ops(files[k]) for k in ("int8", peer)}
    else:
        outside = {"int8": quantize_pte(model, {"preprocessing": pre}, files["int8"], calib)["delegation"]}
        upstream = upstream_model(name, images)
        outside[peer] = xnnpack_quantizer_pte(upstream, files[peer], calib)
        float_ops = {k: {"xnnpack_float": xnnpack_float_ops(xnnpack_operators(files[k], held[:1])),
                         "delegate_calls": outside[k]["subgraphs"],
                         "outside_delegate": outside[k]["outside_delegate"]} for k in outside}
        with torch.no_grad():
            peer_ref = upstream(held).numpy()
    export_s = time.perf_counter() - started
    if engine == "executorch":
        gc.collect()   # the check runs of the export and quantize calls hold the pool until freed
        set_executorch_threads(1)
    ref = _Session(engine, files["fp32"], 1).run(held.numpy())
    row = {"model": name, "engine": engine, "resolution": res, "peer": peer, "logit_error": {},
           "logit_error_abs": {}, "logit_mean_abs_fp32": float(np.abs(ref).mean()),
           "export_seconds": round(export_s, 1), "float_ops": float_ops, "timings_ms": []}
    for k in ("int8", peer):
        got = _Session(engine, files[k], 1).run(held.numpy())
        want = peer_ref if k == peer and peer_ref is not None else ref
        row["logit_error"][k] = float(np.abs(got - want).mean() / np.abs(want).mean())
        row["logit_error_abs"][k] = float(np.abs(got - want).mean())
    if engine == "openvino":   # the share of convolutions the plugin runs in 8 bits
        row["int8_conv_share"] = int8_share(files["int8"])
    for batch, threads in settings:
        x = torch.randn(batch, 3, res, res).numpy()
        if engine == "executorch":   # one process-wide pool: free the last setting's programs first
            gc.collect()
            set_executorch_threads(threads)
        sessions = {k: _Session(engine, p, threads) for k, p in files.items()}
        calls = [lambda s=s: s.run(x) for s in sessions.values()]
        times = time_in_turns(calls, runs, budget_s=30.0)
        ms = {k: 1e3 * statistics.median(t) for k, t in zip(sessions, times)}
        del sessions, calls
        row["timings_ms"].append({"batch": batch, "threads": threads, **ms,
                                  "int8_speedup": ms["fp32"] / ms["int8"],
                                  "peer_speedup": ms["fp32"] / ms[peer]})
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {','.join(ENGINES)}")
    ap.add_argument("--no-timing", action="store_true",
                    help="files, logit errors and float ops only (they do not need the machine to itself)")
    ap.add_argument("--models", default=None, help=f"comma-separated, from {','.join(MODELS)} (default: all)")
    ap.add_argument("--resolution", type=int, default=None, help="input size (default: 224, --quick 64)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_limit.json"))
    args = ap.parse_args(argv)
    models, res, runs = (MODELS[1:3], 64, 6) if args.quick else (MODELS, 224, 30)
    if args.models:
        models = args.models.split(",")
        if set(models) - set(MODELS):
            ap.error(f"--models {args.models}: allowed: {', '.join(MODELS)}")
    res = args.resolution or res
    settings = () if args.no_timing else SETTINGS[:1] if args.quick else SETTINGS
    engines = [e for e in args.engines.split(",") if e]
    if not engines or set(engines) - set(ENGINES):
        ap.error(f"--engines {args.engines}: allowed: {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory(prefix="int8-limit-") as d:
        rows = [run_model(m, e, res, 32, settings, runs, Path(d)) for m in models for e in engines]
    given = sys.argv[1:] if argv is None else argv
    result = {"engines": engines, "machine": {**describe_machine(1), **cpu_peak(), "vnni": cpu_has_vnni()},
              "command": " ".join(["python benchmarks/int8_limit.py", *given]), "rows": rows}
    if not args.quick:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"vnni: {result['machine']['vnni']}")
    print("| model | engine | batch/threads | fp32 ms | int8 ms | int8 × | peer | peer × | logit err int8 / peer "
          "| abs logit err int8 / peer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["timings_ms"]:
            print(f"| {r['model']} | {r['engine']} | – | – | – | – | {r['peer']} | – | "
                  f"{r['logit_error']['int8']:.3f} / {r['logit_error'][r['peer']]:.3f} | "
                  f"{r['logit_error_abs']['int8']:.4f} / {r['logit_error_abs'][r['peer']]:.4f} |")
        for t in r["timings_ms"]:
            print(f"| {r['model']} | {r['engine']} | {t['batch']}/{t['threads']} | {t['fp32']:.2f} | {t['int8']:.2f} | "
                  f"{t['int8_speedup']:.2f} | {r['peer']} | {t['peer_speedup']:.2f} | "
                  f"{r['logit_error']['int8']:.3f} / {r['logit_error'][r['peer']]:.3f} | "
                  f"{r['logit_error_abs']['int8']:.4f} / {r['logit_error_abs'][r['peer']]:.4f} |")


if __name__ == "__main__":
    main()
