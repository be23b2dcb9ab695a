"""V2 §4 (Model Architecture): ReLU6 is used "because of its robustness when used with
low-precision computation". Tested here as the drop in top-1 from fp32 to int8.

Two arms of one small model, MobileNetV2 (α 0.35, total stride 8, Fashion-MNIST) built with
act="relu" and act="relu6", each trained for several seeds with the ablations' trainer call
(`ablate.train_arm`, the `fashion-mnist` recipe and a `Schedule`), then quantized with the
project's int8 recipe (`deploy.quantize.quantize_checkpoint`: BN folded in the fp32 ONNX export,
static QDQ, per-channel int8 weights, uint8 activations calibrated by min/max on training
images). fp32 and int8 top-1 are both measured on the ONNX files over the same test images, so
each seed's drop is a paired difference. Finished runs are appended to `results.jsonl` in the
runs directory; rerunning the same command continues where it stopped.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from ..core.errors import MobileNetsError
from ..core.figures import new_figure, save_figure
from ..core.io import atomic_write_text
from ..deploy.quantize import cpu_has_vnni, quantize_checkpoint
from ..models.mobilenet import load_model
from .ablate import Schedule, _read_results, train_arm

FAMILY = "mobilenet_v2"
WIDTH = 0.35            # the fashion-mnist recipe's width
ARMS = (("ReLU", {"act": "relu"}), ("ReLU6", {"act": "relu6"}))
# 20,000 training images once: at ~180 img/s for this model on 2 cores, the 6 runs of the
# default (2 arms × 3 seeds) train in about 11 minutes; the four evaluations of 10,000 test
# images per run and the quantization add 2–3.
DEFAULT_SCHEDULE = Schedule(epochs=1, batch_size=128, limit_train=20000, limit_test=0)
CALIBRATION_IMAGES = 512   # `mobilenets quantize`'s default
CLAIM = ("ReLU6 is used because of its robustness when used with low-precision computation "
         "(MobileNetV2 §4, Model Architecture)")
TEST_IMAGES = 10000


def arm_key(options: dict) -> str:
    return FAMILY + "-" + "-".join(f"{k}={v}" for k, v in sorted(options.items()))


def run_relu6_int8(runs: str | Path, seeds: int = 3, schedule: Schedule = DEFAULT_SCHEDULE,
                   calib_size: int = CALIBRATION_IMAGES, data_dir: str | None = None,
                   progress: bool = True, train_fn=train_arm) -> dict:
    """Train, export and quantize both arms for seeds 0..seeds-1; returns the summary."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise MobileNetsError(f"seeds={seeds!r} is out of range; allowed: integer >= 1")
    if not isinstance(calib_size, int) or isinstance(calib_size, bool) or calib_size < 1:
        raise MobileNetsError(f"calib_size={calib_size!r} is out of range; allowed: integer >= 1")
    schedule = schedule.check()
    runs = Path(runs)
    runs.mkdir(parents=True, exist_ok=True)
    results_path = runs / "results.jsonl"
    done = _read_results(results_path, schedule)
    eval_size = schedule.limit_test or TEST_IMAGES
    todo = [(label, opts, s) for s in range(seeds) for label, opts in ARMS
            if (arm_key(opts), s) not in done]
    for i, (label, opts, seed) in enumerate(todo, 1):
        key = arm_key(opts)
        if progress:
            print(f"[{i}/{len(todo)}] {label} seed {seed}", file=sys.stderr, flush=True)
        run_dir = runs / schedule.tag() / f"{key}-seed{seed}"
        config = {"family": FAMILY, "width_mult": WIDTH, "options": dict(opts)}
        rec = train_fn(key, config, seed, schedule, run_dir, data_dir, progress)
        model, meta = load_model(run_dir / "best.safetensors")
        q = quantize_checkpoint(model, meta, run_dir / "int8.onnx", "fashion-mnist",
                                calib_size=calib_size, eval_size=eval_size)
        rec.update(label=label, onnx_top1_fp32=q["top1_fp32"] / 100, onnx_top1_int8=q["top1_int8"] / 100,
                   eval_images=q["eval_images"], calibration_images=q["calibration_images"])
        with open(results_path, "a") as f:   # one line per finished run: appends stay whole
            f.write(json.dumps(rec) + "\n")
        done[(key, seed)] = rec
    return {**summarize(done, seeds, schedule, calib_size), "runs_dir": str(runs)}


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def summarize(done: dict, seeds: int, schedule: Schedule, calib_size: int) -> dict:
    """Mean ± sample std over seeds of fp32 top-1, int8 top-1 and the drop (fp32 − int8), per arm."""
    arms = []
    for label, opts in ARMS:
        recs = [done[(arm_key(opts), s)] for s in range(seeds) if (arm_key(opts), s) in done]
        if not recs:
            continue
        fp32 = [r["onnx_top1_fp32"] for r in recs]
        int8 = [r["onnx_top1_int8"] for r in recs]
        drop = [a - b for a, b in zip(fp32, int8)]
        arms.append({"label": label, "options": opts, "runs": len(recs),
                     "seeds": [r["seed"] for r in recs], "top1_fp32": _mean_std(fp32),
                     "top1_int8": _mean_std(int8), "drop": _mean_std(drop),
                     "top1_fp32_per_seed": fp32, "top1_int8_per_seed": int8,
                     "drop_per_seed": drop, "madds": recs[0]["madds"], "params": recs[0]["params"],
                     "eval_images": recs[0]["eval_images"]})
    by = {a["label"]: a for a in arms}
    smaller = None
    if "ReLU" in by and "ReLU6" in by:
        smaller = by["ReLU6"]["drop"]["mean"] < by["ReLU"]["drop"]["mean"]
    return {"claim": CLAIM, "model": FAMILY, "width_mult": WIDTH, "resolution": 28,
            "seeds": seeds, "schedule": schedule.__dict__, "calibration_images": calib_size,
            "quantization": "ONNX Runtime static QDQ: int8 symmetric per-channel weights, uint8 "
                            "asymmetric activations, min/max calibration on training images",
            "weights_7bit": not cpu_has_vnni(),   # quantize_onnx's default on a CPU without VNNI
            "arms": arms, "relu6_drops_less": smaller,
            "accuracy_note": "fp32 and int8 top-1 are both of the ONNX files, fractions of the "
                             "same test images; drop = fp32 − int8, so positive is a loss"}


def plot_relu6_int8(summary: dict, path) -> None:
    """Left: fp32 and int8 top-1 per arm; right: the drop, mean ± std over seeds."""
    fig = new_figure((7.0, 3.2))
    left, right = fig.subplots(1, 2)
    labels = [a["label"] for a in summary["arms"]]
    xs = range(len(labels))
    for offset, field, name in ((-0.2, "top1_fp32", "fp32"), (0.2, "top1_int8", "int8")):
        means = [100 * a[field]["mean"] for a in summary["arms"]]
        stds = [100 * (a[field]["std"] or 0.0) for a in summary["arms"]]
        left.bar([x + offset for x in xs], means, 0.4, yerr=stds, capsize=3, label=name)
    left.set_xticks(list(xs), labels)
    left.set_ylabel("test top-1 (%)")
    lows = [100 * a["top1_int8"]["mean"] for a in summary["arms"]]
    left.set_ylim(max(0.0, min(lows, default=0.0) - 5), 100)
    left.legend(fontsize=8)
    drops = [100 * a["drop"]["mean"] for a in summary["arms"]]
    right.bar(labels, drops, yerr=[100 * (a["drop"]["std"] or 0.0) for a in summary["arms"]],
              capsize=4, color="tab:red", alpha=0.8)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("fp32 − int8 top-1 (points)")
    fig.suptitle(f"MobileNetV2 α {summary['width_mult']} on Fashion-MNIST, "
                 f"{summary['seeds']} seed(s)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def write_results(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
    return path
