"""The evidence for `mobilenets adapt` and `mobilenets search` on Fashion-MNIST, on ONNX Runtime
with 1 thread at batch 1 (latency measured as the verbs measure it: each model's exported file).

`adapt`: NetAdapt against the width multiplier, as the NetAdapt paper sets them side by side.
The committed Fashion-MNIST model is adapted to a share of its measured latency; then V2 models
scaled by α alone, whose measured latency is closest to the adapted model's, are trained from
scratch for the same total number of training steps (the start model's training, plus the
adapted path's short fine-tunes and its long fine-tune), and test top-1 is compared.

`search`: regularised evolution over V3-Small's stage choices for a latency target (by default
0.8× V3-Small's own measured latency); the found table is then trained with the shipped recipe
beside V3-Small and V2 scaled by α to the found network's measured latency, same epochs.

    python benchmarks/search_evidence.py adapt [--ratio 0.5] [--seeds 0,1] [--adapt-seeds 0,1]   # --seeds '': no α trainings
    python benchmarks/search_evidence.py search [--candidates 20] [--proxy-steps 200] [--epochs 3]

Models to be compared are re-measured together, in turns, before α is chosen. The trainings
of one comparison run at once, one thread each (they are not timed). Each stage resumes when
the command is run again. Writes benchmarks/results/search_evidence_{adapt,search}.json and a
plot beside each.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilenets import create_model  # noqa: E402
from mobilenets.analysis.search.adapt import plot_history  # noqa: E402
from mobilenets.analysis.search.evolve import load_arch  # noqa: E402
from mobilenets.analysis.search.latency import measure_models  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402
from mobilenets.models.mobilenet import load_model  # noqa: E402

WEIGHTS = "benchmarks/results/accuracy/fashion-mnist.safetensors"
START_REPORT = "benchmarks/results/accuracy/fashion-mnist.json"
V2_ALPHAS = (0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35, 0.5)
V3_SMALL_ALPHAS = (0.35, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25)
FMNIST = {"num_classes": 10, "in_chans": 1, "small_input": True}
FMNIST_TRAIN_IMAGES = 60000
RECIPE_BATCH = 128   # the fashion-mnist recipe's


def cli(*args: str, threads: int | None = None, wait: bool = True):
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "mobilenets", *args]
    print("+", " ".join(cmd), flush=True)
    if wait:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return None
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def measure_together(models: dict, turns: int = 6) -> dict:
    """Each model's latency, the lowest over `turns` passes over all of them, so a slow spell
    of the machine falls on one pass, not on one model."""
    with tempfile.TemporaryDirectory() as tmp:
        ms = measure_models(list(models.values()), "onnxruntime", 1, 1, 28, Path(tmp), passes=turns)
    return {k: round(v, 5) for k, v in zip(models, ms)}


def nearest(latency: dict, prefix: str, alphas, target_ms: float) -> float:
    return min(alphas, key=lambda a: abs(latency[f"{prefix} {a}"] - target_ms))


def train_all(jobs: dict[Path, list[str]]) -> dict[Path, dict]:
    """Run `mobilenets train` for each output folder at once (one thread each), resuming any
    that stopped; returns each folder's report."""
    running = []
    for out, args in jobs.items():
        if (out / "report.json").exists():
            continue
        if (out / "last.pt").exists():
            where = ["--resume", str(out)]
        else:
            shutil.rmtree(out, ignore_errors=True)   # stopped before its first checkpoint
            where = ["--out", str(out)]
        running.append(cli("train", "--data", "fashion-mnist", "--recipe", "fashion-mnist", *args, *where,
                           threads=1, wait=False))
    if any(j.wait() for j in running):
        raise SystemExit("a training failed")
    return {out: json.loads((out / "report.json").read_text()) for out in jobs}


def summary(report: dict, **extra) -> dict:
    return {**extra, "epochs": report["epochs"], "val_top1": report["val_top1"], "test_top1": report["test_top1"],
            "madds": report["madds"], "params": report["params"], "train_seconds": report["train_seconds"]}


def write(path: str, doc: dict, machine: dict) -> None:
    doc = {"command": "python benchmarks/search_evidence.py " + " ".join(sys.argv[1:]), "machine": machine,
           "machine_after": describe_machine(1),
           "engine": {"name": "onnxruntime", "threads": 1, "batch": 1, "resolution": 28}, **doc}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")


def run_adapt(args, adapt_dir: Path, seed: int) -> dict:
    """One `mobilenets adapt` run (resumed if it stopped); its report, with its wall time when this
    invocation ran all of it."""
    seconds = None
    if not (adapt_dir / "report.json").exists():
        fresh, started = not (adapt_dir / "adapt_state.json").exists(), time.perf_counter()
        cli("adapt", args.weights, "--data", "fashion-mnist", "--engine", "onnxruntime", "--threads", "1",
            "--target-latency-ratio", str(args.ratio), "--initial-reduction", str(args.initial_reduction),
            "--short-steps", str(args.short_steps), "--final-steps", str(args.final_steps),
            "--val-images", str(args.val_images), "--seed", "0", "--finetune-seed", str(seed),
            "--out", str(adapt_dir),
            *([] if fresh else ["--resume"]))
        seconds = round(time.perf_counter() - started, 1) if fresh else None
        if seconds is not None:
            atomic_write_text(adapt_dir / "seconds.json", json.dumps({"seconds": seconds}))
    elif (adapt_dir / "seconds.json").exists():
        seconds = json.loads((adapt_dir / "seconds.json").read_text())["seconds"]
    return {**json.loads((adapt_dir / "report.json").read_text()), "seconds": seconds, "seed": seed}


def adapt_evidence(args) -> None:
    run, machine = ROOT / args.run_dir / "adapt", describe_machine(1)
    adapt_seeds = [int(x) for x in args.adapt_seeds.split(",")]
    adapted = [run_adapt(args, run / f"adapt-seed{seed}", seed) for seed in adapt_seeds]

    start = json.loads((ROOT / START_REPORT).read_text())["report"]
    per_epoch = math.ceil((FMNIST_TRAIN_IMAGES - start["val_images"]) / RECIPE_BATCH)
    start_steps = start["epochs"] * per_epoch
    adapt_steps = max(a["iterations"] for a in adapted) * args.short_steps + args.final_steps
    epochs = round((start_steps + adapt_steps) / per_epoch)

    models = {f"adapted seed {a['seed']}": load_model(a["weights"])[0].eval() for a in adapted}
    models.update({f"V2 {a}": create_model("mobilenet_v2", width_mult=a, **FMNIST).eval() for a in V2_ALPHAS})
    latency = measure_together(models)
    adapted_ms = [latency[f"adapted seed {a['seed']}"] for a in adapted]
    alpha = nearest(latency, "V2", V2_ALPHAS, sum(adapted_ms) / len(adapted_ms))
    print(f"adapted {', '.join(f'{ms:.4f}' for ms in adapted_ms)} ms; nearest V2 α {alpha} at "
          f"{latency[f'V2 {alpha}']:.4f} ms; trained {epochs} epochs ({epochs * per_epoch} steps) against "
          f"{start_steps} + {adapt_steps}", flush=True)
    seeds = [int(x) for x in args.seeds.split(",") if x]   # none: the adapt runs alone, no α trainings
    reports = train_all({run / f"v2-{alpha}-seed{seed}": ["--width-mult", str(alpha), "--set", f"epochs={epochs}",
                                                           "--seed", str(seed)] for seed in seeds})
    baselines = [summary(r, seed=seed, width_mult=alpha) for seed, r in zip(seeds, reports.values())]
    first = run / f"adapt-seed{adapt_seeds[0]}"
    plot_history(first, [{"label": f"V2 α {alpha}, seed {b['seed']} (from scratch)",
                          "measured_ms": latency[f"V2 {alpha}"], "val_top1": b["val_top1"]} for b in baselines]
                 + [{"label": f"adapted, seed {a['seed']}", "measured_ms": ms, "val_top1": a["val_top1"]}
                    for a, ms in zip(adapted[1:], adapted_ms[1:])])
    png = Path(args.out or "benchmarks/results/search_evidence_adapt.json").with_suffix(".png")
    shutil.copyfile(first / "adapt.png", png)
    mean = sum(b["test_top1"] for b in baselines) / len(baselines) if baselines else None
    adapted_mean = sum(a["test_top1"] for a in adapted) / len(adapted)
    write(args.out or "benchmarks/results/search_evidence_adapt.json", {
        "adapt": [{"seed": a["seed"], "seconds": a["seconds"], "start": a["start"], "target_ms": a["target"],
                   "iterations": a["iterations"], "plan": a["plan"], "madds": a["madds"],
                   "measured_ms_by_adapt": a["measured_ms"], "measured_ms": ms, "val_top1": a["val_top1"],
                   "test_top1": a["test_top1"], "settings": a["settings"],
                   "history": [{k: r[k] for k in ("iteration", "label", "width", "cost", "table_miss", "measured_ms",
                                                  "val_top1") if k in r}
                               for r in map(json.loads, (run / f"adapt-seed{a['seed']}" / "history.jsonl")
                                            .read_text().splitlines())]}
                  for a, ms in zip(adapted, adapted_ms)],
        "training_steps": {"start_model": start_steps, "adapt_kept_path": adapt_steps,
                           "alpha_models": epochs * per_epoch, "batch": RECIPE_BATCH},
        "latency_ms": latency, "alpha": alpha, "alpha_models": baselines,
        "test_top1_adapted_mean": round(adapted_mean, 4),
        "test_top1_alpha_mean": None if mean is None else round(mean, 4),
        "test_top1_adapted_minus_alpha_mean": None if mean is None else round(adapted_mean - mean, 4),
        "plot": str(png)}, machine)
    for a, ms in zip(adapted, adapted_ms):
        print(f"adapted seed {a['seed']}: {ms:.4f} ms, test top-1 {a['test_top1']:.4f}")
    print(f"V2 α {alpha}: {latency[f'V2 {alpha}']:.4f} ms, test top-1 " + ", ".join(f"{b['test_top1']:.4f}" for b in baselines))


def search_evidence(args) -> None:
    run, machine = ROOT / args.run_dir / "search", describe_machine(1)
    search_dir = run / "search"
    search_seconds = None
    if not (search_dir / "report.json").exists():
        fresh = not (search_dir / "settings.json").exists()
        if fresh:
            v3s = measure_together({"V3-Small": create_model("mobilenet_v3_small", **FMNIST).eval()})["V3-Small"]
            target = round(args.target_ratio * v3s, 4)
            print(f"V3-Small measures {v3s:.4f} ms; target {target} ms", flush=True)
        started = time.perf_counter()
        cli("search", "--data", "fashion-mnist", "--engine", "onnxruntime", "--threads", "1",
            *(["--target-latency-ms", str(target), "--candidates", str(args.candidates),
               "--population", str(args.population), "--proxy-steps", str(args.proxy_steps),
               "--val-images", str(args.val_images), "--latency-weight", str(args.latency_weight),
               "--out", str(search_dir)] if fresh else ["--out", str(search_dir), "--resume"]))
        search_seconds = round(time.perf_counter() - started, 1) if fresh else None
    found = json.loads((search_dir / "arch.json").read_text())
    models = {"searched": load_arch(search_dir / "arch.json").eval()}
    models.update({f"V3-Small {a}": create_model("mobilenet_v3_small", width_mult=a, **FMNIST).eval()
                   for a in V3_SMALL_ALPHAS})
    models.update({f"V2 {a}": create_model("mobilenet_v2", width_mult=a, **FMNIST).eval() for a in V2_ALPHAS})
    latency = measure_together(models)
    v3s = nearest(latency, "V3-Small", V3_SMALL_ALPHAS, latency["searched"])
    v2 = nearest(latency, "V2", V2_ALPHAS, latency["searched"])
    epochs = ["--set", f"epochs={args.epochs}", "--seed", "0"]
    blocks = "model_options=" + json.dumps({"blocks": found["model_kwargs"]["blocks"]})
    jobs = {run / "searched": ["--model", "mobilenet_v3_small", "--width-mult", "1.0", "--set", blocks, *epochs],
            run / f"v3-small-{v3s}": ["--model", "mobilenet_v3_small", "--width-mult", str(v3s), *epochs],
            run / f"v2-{v2}": ["--model", "mobilenet_v2", "--width-mult", str(v2), *epochs]}
    reports = list(train_all(jobs).values())
    rows = [summary(reports[0], model="searched", measured_ms=latency["searched"]),
            summary(reports[1], model=f"mobilenet_v3_small α {v3s}", measured_ms=latency[f"V3-Small {v3s}"]),
            summary(reports[2], model=f"mobilenet_v2 α {v2}", measured_ms=latency[f"V2 {v2}"])]
    png = Path(args.out or "benchmarks/results/search_evidence_search.json").with_suffix(".png")
    shutil.copyfile(search_dir / "candidates.png", png)
    log = [json.loads(ln) for ln in (search_dir / "log.jsonl").read_text().splitlines()]
    write(args.out or "benchmarks/results/search_evidence_search.json", {
        "search": {"seconds": search_seconds, "settings": json.loads((search_dir / "settings.json").read_text()),
                   "arch": found, "arch_txt": (search_dir / "arch.txt").read_text(),
                   "candidates": [{k: c[k] for k in ("index", "table_ms", "measured_ms", "val_top1", "reward")}
                                  for c in log]},
        "latency_ms": latency, "trained": rows, "plot": str(png)}, machine)
    for r in rows:
        print(f"{r['model']:28s} {r['measured_ms']:.4f} ms  {r['madds'] / 1e6:6.2f} M MAdds  "
              f"val {r['val_top1']:.4f}  test {r['test_top1']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("adapt")
    a.add_argument("--weights", default=WEIGHTS)
    a.add_argument("--ratio", type=float, default=0.5)
    a.add_argument("--seeds", default="0,1", help="seeds of the α-scaled trainings (empty: none)")
    a.add_argument("--adapt-seeds", default="0,1", help="fine-tune seeds of the adapt runs (the val split stays the start model's)")
    a.add_argument("--short-steps", type=int, default=50)
    a.add_argument("--final-steps", type=int, default=1000)
    a.add_argument("--initial-reduction", type=float, default=0.12)
    a.add_argument("--val-images", type=int, default=1000)
    a.set_defaults(func=adapt_evidence)
    s = sub.add_parser("search")
    s.add_argument("--target-ratio", type=float, default=0.8, help="of V3-Small's measured latency")
    s.add_argument("--candidates", type=int, default=20)
    s.add_argument("--population", type=int, default=6)
    s.add_argument("--proxy-steps", type=int, default=200)
    s.add_argument("--latency-weight", type=float, default=-0.15)
    s.add_argument("--val-images", type=int, default=1000)
    s.add_argument("--epochs", type=int, default=3, help="of the final trainings")
    s.set_defaults(func=search_evidence)
    for p in (a, s):
        p.add_argument("--run-dir", default="runs/search-evidence")
        p.add_argument("--out", default=None)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
