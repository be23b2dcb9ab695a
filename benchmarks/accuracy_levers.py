"""What each training lever buys on Fashion-MNIST at a fixed budget: the two-hour recipe's model
(`fashion-mnist-best`: MobileNetV2 0.5, small input) trained for the same number of epochs once
per lever, one change from the base each, scored on the held-out val split only (the test split
is left for the final recipe). Rows: val top-1 at the last epoch and the best epoch, training
minutes and images per second.

    python benchmarks/accuracy_levers.py [--epochs 6] [--levers base,ema,...] [--seed 0]
        [--runs runs/levers] [--out benchmarks/results/accuracy_levers.json]

A lever whose run finished is read back, not trained again; an interrupted one resumes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402

BASE = ["--data", "fashion-mnist", "--recipe", "fashion-mnist-best"]
# One change from the base each: the levers the field uses for short schedules.
LEVERS = {
    "base": [],
    "ema": ["ema_decay=0.998"],
    "trivialaugment": ["auto_augment=trivialaugment"],
    "bf16": ["amp=bf16"],
    "batch256_lr0.2": ["batch_size=256", "lr=0.2"],
    "lr0.2": ["lr=0.2"],
    "no_label_smoothing": ["label_smoothing=0.0"],
}


def train_command(lever: str, epochs: int, seed: int, out: Path) -> list[str]:
    sets = [a for kv in [f"epochs={epochs}", *LEVERS[lever]] for a in ("--set", kv)]
    return [sys.executable, "-m", "mobilenets", "train", *BASE, "--seed", str(seed), *sets, "--out", str(out)]


def summary(lever: str, out: Path, command: list[str]) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_top1"])
    return {"lever": lever, "sets": LEVERS[lever], "command": " ".join(["mobilenets", *command[3:]]),
            "epochs": len(rows), "val_top1_last": rows[-1]["val_top1"], "val_top1_best": best["val_top1"],
            "best_epoch": best["epoch"], "train_minutes": round(sum(r["epoch_seconds"] for r in rows) / 60, 1),
            "img_per_s": round(sum(r["img_per_s"] for r in rows) / len(rows), 1),
            "val_top1_by_epoch": [r["val_top1"] for r in rows]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, from {','.join(LEVERS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/levers")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_levers.json"))
    args = p.parse_args(argv)
    levers = args.levers.split(",")
    unknown = [lv for lv in levers if lv not in LEVERS]
    if unknown or args.epochs < 1:
        p.error(f"--levers {','.join(unknown)}: allowed: {', '.join(LEVERS)}" if unknown else "--epochs must be >= 1")
    result = {"benchmark": "accuracy_levers", "base": " ".join(BASE), "epochs": args.epochs, "seed": args.seed,
              "machine": describe_machine(), "selection": "none: every lever reports the val split only",
              "rows": []}
    for lever in levers:
        out = Path(args.runs) / f"{lever}_e{args.epochs}_s{args.seed}"
        command = train_command(lever, args.epochs, args.seed, out)
        if not (out / "report.json").is_file():
            run = ([sys.executable, "-m", "mobilenets", "train", "--resume", str(out)]
                   if (out / "last.pt").is_file() else command)
            print(" ".join(run), flush=True)
            subprocess.run(run, check=True)
        row = summary(lever, out, command)
        result["rows"].append(row)
        print(f"{lever:22s} val top-1 last {row['val_top1_last']:.4f} best {row['val_top1_best']:.4f} "
              f"(epoch {row['best_epoch']})  {row['train_minutes']:.1f} min  {row['img_per_s']:.0f} img/s", flush=True)
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
