"""int8 against fp32 on ONNX Runtime, per network, on this CPU (VNNI recorded): each int8 file
(`quantize_onnx`, h-swish and squeeze-excite kept in int8) against ONNX Runtime's own
`quantize_static` on the same float graph as exported, and the fp32 file, timed in settled turns
in one run. Models have random weights with BN statistics calibrated on the input images, so
activations are in a realistic range; logit error is the mean |int8 − fp32| over mean |fp32|.

    python benchmarks/int8_limit.py            # writes benchmarks/results/int8_limit.json
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
from mobilenets.deploy.bench import calibrate_batchnorm, cpu_peak, time_in_turns  # noqa: E402
from mobilenets.deploy.export import INPUT_NAME, export, ort_session  # noqa: E402
from mobilenets.deploy.quantize import _Reader, cpu_has_vnni, quantize_onnx  # noqa: E402
from mobilenets.models.mobilenet import create_model  # noqa: E402

MODELS = ("mobilenet_v2_100", "mobilenet_v3_large_100", "mobilenet_v3_small_100",
          "mobilenet_v4_conv_small_100", "mobilenet_v4_conv_medium_100")
SETTINGS = ((1, 1), (32, 2))   # (batch, threads)


def plain_quantize_static(fp32: Path, out: Path, calib: torch.Tensor) -> None:
    """What a user gets from ONNX Runtime's quantizer on the exported graph, same recipe."""
    from onnxruntime.quantization import QuantType, quantize_static
    quantize_static(str(fp32), str(out), _Reader(calib), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True})


def run_model(name: str, res: int, calib_n: int, settings, runs: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(calib_n + 8, 3, res, res)
    calibrate_batchnorm(model, images)
    pre = dict(resolution=res, resize=res, mean=[0.0], std=[1.0], in_chans=3, interpolation="bilinear")
    files = {"fp32": workdir / f"{name}.fp32.onnx", "int8": workdir / f"{name}.int8.onnx",
             "ort-quantize_static": workdir / f"{name}.plain.onnx"}
    export(model, files["fp32"], "onnx", {"preprocessing": pre}, check_inputs=images[:3])
    calib = images[:calib_n]
    quantize_onnx(files["fp32"], files["int8"], calib, reduce_range=not cpu_has_vnni())
    plain_quantize_static(files["fp32"], files["ort-quantize_static"], calib)
    held = {INPUT_NAME: images[calib_n:].numpy()}
    ref = ort_session(files["fp32"], 1).run(None, held)[0]
    row = {"model": name, "resolution": res, "logit_error": {}, "timings_ms": []}
    for k in ("int8", "ort-quantize_static"):
        got = ort_session(files[k], 1).run(None, held)[0]
        row["logit_error"][k] = float(np.abs(got - ref).mean() / np.abs(ref).mean())
    for batch, threads in settings:
        x = {INPUT_NAME: torch.randn(batch, 3, res, res).numpy()}
        sessions = {k: ort_session(p, threads) for k, p in files.items()}
        calls = [lambda s=s: s.run(None, x) for s in sessions.values()]
        times = time_in_turns(calls, runs, budget_s=30.0)
        ms = {k: 1e3 * statistics.median(t) for k, t in zip(sessions, times)}
        row["timings_ms"].append({"batch": batch, "threads": threads, **ms,
                                  "int8_speedup": ms["fp32"] / ms["int8"],
                                  "quantize_static_speedup": ms["fp32"] / ms["ort-quantize_static"]})
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_limit.json"))
    args = ap.parse_args(argv)
    models, res, runs = (MODELS[1:3], 64, 6) if args.quick else (MODELS, 224, 30)
    settings = SETTINGS[:1] if args.quick else SETTINGS
    with tempfile.TemporaryDirectory(prefix="int8-limit-") as d:
        rows = [run_model(m, res, 32, settings, runs, Path(d)) for m in models]
    result = {"engine": "onnxruntime", "machine": {**cpu_peak(), "vnni": cpu_has_vnni()},
              "command": "python benchmarks/int8_limit.py" + (" --quick" if args.quick else ""),
              "rows": rows}
    if not args.quick:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"vnni: {result['machine']['vnni']}")
    print("| model | batch/threads | fp32 ms | int8 ms | int8 × | quantize_static × | logit err int8 / qs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for t in r["timings_ms"]:
            print(f"| {r['model']} | {t['batch']}/{t['threads']} | {t['fp32']:.2f} | {t['int8']:.2f} | "
                  f"{t['int8_speedup']:.2f} | {t['quantize_static_speedup']:.2f} | "
                  f"{r['logit_error']['int8']:.3f} / {r['logit_error']['ort-quantize_static']:.3f} |")


if __name__ == "__main__":
    main()
