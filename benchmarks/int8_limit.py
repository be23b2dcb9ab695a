"""int8 against fp32 per engine and network, on this CPU (VNNI recorded). On ONNX Runtime: each
int8 file (`quantize_onnx`, h-swish and squeeze-excite kept in int8) against ONNX Runtime's own
`quantize_static` on the same float graph as exported. On OpenVINO: `quantize_openvino` (NNCF with
the library's recipe) against NNCF's defaults on the same graph. Each beside the fp32 file on the
same engine, timed in settled turns in one run. Models have random weights with BN statistics
calibrated on the input images, so activations are in a realistic range; logit error is the mean
|int8 − fp32| over mean |fp32|.

    python benchmarks/int8_limit.py [--engines onnxruntime,openvino]   # writes benchmarks/results/int8_limit.json
    python benchmarks/int8_limit.py --quick    # two models, 64 px, a smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.deploy.backends import OpenVinoBackend  # noqa: E402
from mobilenets.deploy.bench import calibrate_batchnorm, cpu_peak, time_in_turns  # noqa: E402
from mobilenets.deploy.export import INPUT_NAME, export, ort_session  # noqa: E402
from mobilenets.deploy.openvino import int8_share, quantize_openvino  # noqa: E402
from mobilenets.deploy.quantize import _Reader, cpu_has_vnni, quantize_onnx  # noqa: E402
from mobilenets.models.mobilenet import create_model  # noqa: E402

MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "mobilenet_v3_small_100",
          "mobilenet_v4_conv_small_100", "mobilenet_v4_conv_medium_100")
SETTINGS = ((1, 1), (32, 2))   # (batch, threads)
ENGINES = ("onnxruntime", "openvino")
PEER = {"onnxruntime": "ort-quantize_static", "openvino": "nncf-defaults"}


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


class _Session:
    """One file on one engine: `run(x) -> logits` for numpy batches."""

    def __init__(self, engine: str, path: Path, threads: int):
        if engine == "onnxruntime":
            sess = ort_session(path, threads)
            self.run = lambda x: sess.run(None, {INPUT_NAME: x})[0]
        else:  # the peer's file has no mobilenets metadata: compile it with OpenVINO directly
            import openvino as ov
            compiled = ov.Core().compile_model(str(path), "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
                "INFERENCE_PRECISION_HINT": "f32"})   # as OpenVinoBackend compiles
            request = compiled.create_infer_request()
            self.run = lambda x: request.infer([x], share_inputs=True)[0]


def run_model(name: str, engine: str, res: int, calib_n: int, settings, runs: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(calib_n + 8, 3, res, res)
    calibrate_batchnorm(model, images)
    pre = dict(resolution=res, resize=res, mean=[0.0], std=[1.0], in_chans=3, interpolation="bilinear")
    peer = PEER[engine]
    files = {"fp32": workdir / f"{name}.fp32.onnx", "int8": workdir / f"{name}.{engine}.int8.onnx",
             peer: workdir / f"{name}.{engine}.peer.onnx"}
    if not files["fp32"].exists():
        export(model, files["fp32"], "onnx", {"preprocessing": pre}, check_inputs=images[:3])
    calib = images[:calib_n]
    if engine == "onnxruntime":
        quantize_onnx(files["fp32"], files["int8"], calib, reduce_range=not cpu_has_vnni())
        plain_quantize_static(files["fp32"], files[peer], calib)
    else:
        quantize_openvino(files["fp32"], files["int8"], calib)
        nncf_defaults(files["fp32"], files[peer], calib)
    held = images[calib_n:].numpy()
    ref = _Session(engine, files["fp32"], 1).run(held)
    row = {"model": name, "engine": engine, "resolution": res, "peer": peer, "logit_error": {}, "timings_ms": []}
    for k in ("int8", peer):
        got = _Session(engine, files[k], 1).run(held)
        row["logit_error"][k] = float(np.abs(got - ref).mean() / np.abs(ref).mean())
    if engine == "openvino":   # the share of convolutions the plugin runs in 8 bits
        row["int8_conv_share"] = int8_share(files["int8"])
    for batch, threads in settings:
        x = torch.randn(batch, 3, res, res).numpy()
        sessions = {k: _Session(engine, p, threads) for k, p in files.items()}
        calls = [lambda s=s: s.run(x) for s in sessions.values()]
        times = time_in_turns(calls, runs, budget_s=30.0)
        ms = {k: 1e3 * statistics.median(t) for k, t in zip(sessions, times)}
        row["timings_ms"].append({"batch": batch, "threads": threads, **ms,
                                  "int8_speedup": ms["fp32"] / ms["int8"],
                                  "peer_speedup": ms["fp32"] / ms[peer]})
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {','.join(ENGINES)}")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_limit.json"))
    args = ap.parse_args(argv)
    models, res, runs = (MODELS[1:3], 64, 6) if args.quick else (MODELS, 224, 30)
    settings = SETTINGS[:1] if args.quick else SETTINGS
    engines = [e for e in args.engines.split(",") if e]
    if not engines or set(engines) - set(ENGINES):
        ap.error(f"--engines {args.engines}: allowed: {', '.join(ENGINES)}")
    with tempfile.TemporaryDirectory(prefix="int8-limit-") as d:
        rows = [run_model(m, e, res, 32, settings, runs, Path(d)) for m in models for e in engines]
    result = {"engines": engines, "machine": {**cpu_peak(), "vnni": cpu_has_vnni()},
              "command": "python benchmarks/int8_limit.py" + (" --quick" if args.quick else "")
                         + (f" --engines {args.engines}" if engines != list(ENGINES) else ""),
              "rows": rows}
    if not args.quick:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"vnni: {result['machine']['vnni']}")
    print("| model | engine | batch/threads | fp32 ms | int8 ms | int8 × | peer | peer × | logit err int8 / peer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for t in r["timings_ms"]:
            print(f"| {r['model']} | {r['engine']} | {t['batch']}/{t['threads']} | {t['fp32']:.2f} | {t['int8']:.2f} | "
                  f"{t['int8_speedup']:.2f} | {r['peer']} | {t['peer_speedup']:.2f} | "
                  f"{r['logit_error']['int8']:.3f} / {r['logit_error'][r['peer']]:.3f} |")


if __name__ == "__main__":
    main()
