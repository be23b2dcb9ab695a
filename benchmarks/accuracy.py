"""Re-make a headline accuracy number: train with a shipped recipe, score the returned model on the
test split once (with and without flip averaging), and write a small JSON summary beside the
machine it ran on.

    python benchmarks/accuracy.py --list
    python benchmarks/accuracy.py fashion-mnist [--threads 2] [--seed 0] [--run-dir DIR] [--keep-weights]
    python benchmarks/accuracy.py fashion-mnist --collect runs/fmnist      # summarise a finished run
    python benchmarks/accuracy.py detection | segmentation                 # on the scene set

The model is chosen on the held-out val split of the training images (the recipe's
`val_fraction`); the test images (for detection and segmentation: the scene set's val split) are
never seen before the end. The scene set is written to runs/scenes first when it is missing. An
interrupted training resumes when the same command is run again. The summary goes to
benchmarks/results/accuracy/NAME.json (with `--keep-weights`, the weights to NAME.safetensors in
float16, so `mobilenets eval` re-scores them in seconds). With `--collect`, the machine is
described when the summary is written, not while the run trained; the summary says so.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402

FMNIST = ["--data", "fashion-mnist", "--recipe", "fashion-mnist"]
# The scene set the detection and segmentation recipes are sized for (`mobilenets data scenes`).
SCENES = Path("runs") / "scenes"
SCENE_ARGS = ["--train", "4000", "--val", "500", "--seed", "0"]
SEGMENTATION = ["--task", "segmentation", "--data", str(SCENES / "voc"), "--recipe", "segmentation"]
EXPERIMENTS = {
    "fashion-mnist": (FMNIST, "the shipped Fashion-MNIST recipe: MobileNetV2 0.35, small input, 9 epochs"),
    "fashion-mnist-20ep": (
        FMNIST + ["--set", "epochs=20"],
        "the shipped Fashion-MNIST recipe run for 20 epochs instead of 9 (44 minutes on a "
        "2-core Zen 3 with a 174 GFLOP/s 2-thread SGEMM)"),
    "fashion-mnist-best": (
        ["--data", "fashion-mnist", "--recipe", "fashion-mnist-best"],
        "the two-hour Fashion-MNIST recipe: MobileNetV2 0.5, small input, 30 epochs"),
    "fashion-mnist-60min": (
        ["--data", "fashion-mnist", "--recipe", "fashion-mnist-best", "--set", "batch_size=64",
         "--set", "lr=0.05", "--set", "epochs=12"],
        "the two-hour recipe cut to 12 epochs at batch 64 (learning rate 0.05, scaled linearly "
        "from batch 128's 0.1), sized for an hour of training on a 2-core Zen 3 at 200 img/s"),
    "fashion-mnist-v4-conv-small-3ep": (
        FMNIST + ["--model", "mobilenet_v4_conv_small", "--width-mult", "1.0", "--set", "epochs=3"],
        "MobileNetV4-Conv-S, small input, the Fashion-MNIST recipe cut to 3 epochs"),
    "fashion-mnist-v3-small-3ep": (
        FMNIST + ["--model", "mobilenet_v3_small", "--width-mult", "1.0", "--set", "epochs=3"],
        "MobileNetV3-Small, small input, the Fashion-MNIST recipe cut to 3 epochs"),
    "detection": (
        ["--task", "detection", "--data", str(SCENES / "coco"), "--recipe", "detection"],
        "SSDLite on MobileNetV2 0.5, the detection recipe on the scene set (4000 training scenes)"),
    "segmentation": (SEGMENTATION, "Mobile DeepLabv3 on MobileNetV2 0.5, the segmentation recipe on the scene set"),
    # The scene set's objects are Fashion-MNIST items (training split for the training scenes),
    # so the committed two-hour classifier is a backbone that has seen none of the val scenes.
    "segmentation-fmnist-backbone": (
        SEGMENTATION + ["--backbone", "benchmarks/results/accuracy/fashion-mnist-best.safetensors",
                        "--set", "epochs=30"],
        "Mobile DeepLabv3 on MobileNetV2 0.5 started from the fashion-mnist-best classifier's "
        "backbone, the segmentation recipe cut to 30 epochs"),
    # Its held-out scenes are the same seeded 400 as segmentation-fmnist-backbone's, so neither
    # stage trained on the scenes that pick the epoch.
    "segmentation-256px": (
        SEGMENTATION + ["--backbone", "benchmarks/results/accuracy/segmentation-fmnist-backbone.safetensors",
                        "--set", "resolution=256", "--set", "epochs=16"],
        "Mobile DeepLabv3 on MobileNetV2 0.5 at 256 px instead of 192, its backbone taken from "
        "the segmentation-fmnist-backbone result (ASPP and classifier start afresh), 16 epochs"),
}
# What each task's evaluation reports, and the split its run scores once, at the end.
SCORES = {"classification": ("top1", "top5"), "detection": ("mAP", "AP50", "AP75"),
          "segmentation": ("mIoU", "pixel_accuracy")}
TEST_SPLIT = {"classification": "test", "detection": "val", "segmentation": "val"}
HEADLINE = {"classification": "top1", "detection": "AP50", "segmentation": "mIoU"}
RESULTS = ROOT / "benchmarks" / "results" / "accuracy"
# Multi-scale inference for segmenters: the scale sets tried, each with flipped copies, on the
# held-out training scenes; the best is the one the test scenes see. The scenes' items are small,
# so the sets lean to enlarging.
SCALE_CANDIDATES = ((1.0,), (1.0, 1.25), (1.0, 1.5), (0.75, 1.0, 1.25), (1.0, 1.25, 1.5, 1.75))
REPORT_KEYS = ("model", "model_kwargs", "task", "recipe", "data", "resolution", "epochs", "train_seconds",
               "params", "madds", "selection", "best_epoch", "val_images", "test_split", "test_images",
               *(f"{split}_{k}" for k in sorted({k for ks in SCORES.values() for k in ks})
                 for split in ("val", "test")))


def option(name: str, flag: str, default: str) -> str:
    args = EXPERIMENTS[name][0]
    return args[args.index(flag) + 1] if flag in args else default


def mobilenets_cli(*args: str, threads: int | None) -> None:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "mobilenets", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def train(name: str, run_dir: Path, seed: int, threads: int | None) -> None:
    data = ROOT / option(name, "--data", "fashion-mnist")
    if option(name, "--task", "classification") != "classification" and not data.is_dir():
        mobilenets_cli("data", "scenes", "--out", str(ROOT / SCENES), *SCENE_ARGS, threads=threads)
    if (run_dir / "report.json").exists():
        print(f"{run_dir} has finished; summarising it")
    elif (run_dir / "last.pt").exists():
        mobilenets_cli("train", "--resume", str(run_dir), threads=threads)
    else:
        mobilenets_cli("train", *EXPERIMENTS[name][0], "--seed", str(seed), "--out", str(run_dir),
                       threads=threads)


def held_out_scores(run_dir: Path, threads: int | None, candidates=SCALE_CANDIDATES) -> dict[str, float]:
    """mIoU of a segmentation run's returned model on its held-out training scenes (the split that
    chose its epoch) for each candidate scale set, with flipped copies."""
    import torch
    from torch.utils.data import DataLoader
    from mobilenets.models.mobilenet import load_task_model
    from mobilenets.train.tasks import build_task
    cfg = json.loads((run_dir / "config.json").read_text())
    model, meta = load_task_model(run_dir / "best.safetensors")
    pre, scores = meta["preprocessing"], {}
    if threads:
        torch.set_num_threads(threads)
    for scales in candidates:
        task = build_task("segmentation", str(ROOT / cfg["data"]), pre["resolution"], pre["mean"], pre["std"],
                          scales=scales, flip=True).for_training(cfg)
        if task.val is None:
            raise SystemExit(f"{run_dir}: the run held out no training scenes to choose scales on")
        loader = DataLoader(task.val.dataset, batch_size=16, collate_fn=task.collate)
        scores[",".join(f"{s:g}" for s in scales)] = task.evaluate(model, loader)["mIoU"]
    return scores


def score_test(name: str, run_dir: Path, threads: int | None) -> dict:
    """The returned model's scores on the test split, by `mobilenets eval`: plain, and (not for
    detectors) with flip averaging; a segmenter's also with the multi-scale set that scores best
    on its held-out scenes."""
    task, out = option(name, "--task", "classification"), {}
    variants = (("plain", []),) + ((("flip", ["--flip"]),) if task != "detection" else ())
    if task == "segmentation":
        held_out = held_out_scores(run_dir, threads)
        scales = max(held_out, key=held_out.get)
        variants += (("multi_scale_flip", ["--flip", "--scales", scales]),)
    for label, extra in variants:
        eval_dir = run_dir / f"test-{label}"
        mobilenets_cli("eval", str(run_dir / "best.safetensors"), "--data", option(name, "--data", "fashion-mnist"),
                       "--split", TEST_SPLIT[task], *extra, "--out", str(eval_dir), threads=threads)
        result = json.loads((eval_dir / ("eval.json" if task == "classification" else "metrics.json")).read_text())
        out[label] = {k: result[k] for k in (*SCORES[task], "images", "split")}
    if task == "segmentation":
        out["multi_scale_flip"].update(scales=[float(v) for v in scales.split(",")], held_out_mIoU=held_out)
    return out


def epochs_of(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def summarise(name: str, run_dir: Path, seed: int, machine: dict, described_at: str,
              tests: dict) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    epochs = epochs_of(run_dir)
    images = sum(e.get("img_per_s", 0) * e.get("epoch_seconds", 0) for e in epochs)
    weights = (run_dir / "best.safetensors").read_bytes()
    return {
        "experiment": name, "about": EXPERIMENTS[name][1],
        "command": " ".join(["python benchmarks/accuracy.py", name, "--seed", str(seed)]),
        "train_command": " ".join(["mobilenets train", *EXPERIMENTS[name][0], "--seed", str(seed)]),
        "machine": machine, "machine_described_at": described_at,
        "report": {k: report[k] for k in REPORT_KEYS if k in report},
        "test": tests,
        "train_img_per_s": [e.get("img_per_s") for e in epochs],
        "img_per_s_per_sgemm_gflop": (round(images / max(report["train_seconds"], 1e-9)
                                            / machine["sgemm_gflops"], 3) if images else None),
        "epochs": epochs,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }


def store_half(weights: Path, dest: Path) -> str:
    """Write `weights` to `dest` with floating tensors in float16 and return the stored file's
    sha256. Half the bytes keeps a segmenter under a few MB; loading casts back to float32, and
    the committed scene models' scores moved by under 2e-5 (mIoU) when stored this way."""
    from mobilenets.models.weights import load_weights, write_weights
    state, meta = load_weights(weights)
    write_weights(dest, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, meta)
    return hashlib.sha256(dest.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", nargs="?", choices=sorted(EXPERIMENTS))
    ap.add_argument("--list", action="store_true", help="print the experiments and exit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    ap.add_argument("--run-dir", type=Path, help="default runs/accuracy/EXPERIMENT")
    ap.add_argument("--collect", type=Path, metavar="RUN_DIR",
                    help="summarise this finished run instead of training")
    ap.add_argument("--keep-weights", action="store_true",
                    help="also store best.safetensors, in float16, in benchmarks/results/accuracy/")
    args = ap.parse_args(argv)
    if args.list or not args.experiment:
        for name, (cli, about) in EXPERIMENTS.items():
            print(f"{name:34s} {about}\n{'':34s} mobilenets train {' '.join(cli)}")
        return 0
    run_dir = args.collect or args.run_dir or ROOT / "runs" / "accuracy" / args.experiment
    if args.collect:
        if not (run_dir / "report.json").exists():
            raise SystemExit(f"{run_dir}: no report.json; the run has not finished")
        machine, described_at = describe_machine(args.threads), "collection"
    else:
        machine, described_at = describe_machine(args.threads), "training"
        train(args.experiment, run_dir, args.seed, args.threads)
        machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    tests = score_test(args.experiment, run_dir, args.threads)
    summary = summarise(args.experiment, run_dir, args.seed, machine, described_at, tests)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.experiment}.json"
    if args.keep_weights:
        summary["stored_weights_sha256"] = store_half(run_dir / "best.safetensors",
                                                      RESULTS / f"{args.experiment}.safetensors")
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")
    r, t = summary["report"], summary["test"]
    metric = HEADLINE[r.get("task", "classification")]
    scores = ", ".join(f"{label} {v[metric]:.4f}" for label, v in t.items())
    print(f"{args.experiment}: val {metric} {r[f'val_{metric}']}, test {metric} {scores} after "
          f"{r['train_seconds'] / 60:.1f} min on {machine['model_name']} (SGEMM {machine['sgemm_gflops']} "
          f"GFLOP/s) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
