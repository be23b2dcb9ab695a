"""How well a latency table predicts whole models: for each model and engine, measure the table
(`mobilenets latency-table`), then draw random channel plans (every shortcut group, expansion
and squeeze-excite width drawn from 35–100% of the model's, multiples of 8), export each plan's
model to the engine as `mobilenets export` / `quantize` write it, time it, and set the
measurement beside the table's prediction.

Reported per model and engine, as the field reports its predictors: the median absolute error,
the share of plans within ±5% and ±10%, and Spearman's rank correlation, both for the plain sum
of pieces and for the sum with the table's per-model constant (fitted on the whole model and two
uniform cuts of it when the table is made, never on the random plans). Random weights, batch 1,
one thread by default; the JSON records the CPU, its SGEMM rate and the engine versions.

    python benchmarks/latency_table.py                                   # V2 and V3-Small at 224, ORT fp32 and int8
    python benchmarks/latency_table.py --engines onnxruntime,int8,openvino,executorch,eager --plans 10
    python benchmarks/latency_table.py --quick                           # a 28 px model, 3 plans
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mobilenets import create_model  # noqa: E402
from mobilenets.analysis.search.latency import measure_model, measure_table, predict  # noqa: E402
from mobilenets.core.io import atomic_write_text  # noqa: E402
from mobilenets.core.machine import describe_machine  # noqa: E402
from mobilenets.core.runtime import tune_allocator  # noqa: E402
from mobilenets.models.plan import plan_of, shortcut_groups  # noqa: E402

MODELS = {"mobilenet_v2": ({}, 224), "mobilenet_v3_small": ({}, 224),
          "fmnist_v2_035": ({"width_mult": 0.35, "small_input": True, "in_chans": 1, "num_classes": 10}, 28)}


def random_plan(model, rng: random.Random, low: float = 0.35) -> dict:
    base = plan_of(model.arch)
    plan = json.loads(json.dumps(base))

    def cut(w):
        return max(8, int(round(w * rng.uniform(low, 1.0) / 8)) * 8)
    for group in shortcut_groups(model.arch):
        first = base["stem"] if group[0] == "stem" else base["out"][group[0]]
        width = cut(first)
        for m in group:
            if m == "stem":
                plan["stem"] = width
            else:
                plan["out"][m] = width
    plan["expand"] = [cut(e) if e else None for e in base["expand"]]
    plan["se"] = [cut(s) if s else 0 for s in base["se"]]
    return plan


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def summary(errors: list[float], measured: list[float], predicted: list[float]) -> dict:
    absolute = [abs(e) for e in errors]
    return {"median_abs_error": round(statistics.median(absolute), 4),
            "within_5pct": round(sum(a <= 0.05 for a in absolute) / len(absolute), 3),
            "within_10pct": round(sum(a <= 0.10 for a in absolute) / len(absolute), 3),
            "spearman": round(spearman(measured, predicted), 3)}


def run(name: str, engine: str, plans: int, threads: int, seed: int) -> dict:
    kwargs, res = MODELS[name]
    family = "mobilenet_v2" if name.startswith("fmnist") else name
    torch.manual_seed(seed)
    model = create_model(family, **kwargs).eval()
    start = time.perf_counter()
    table = measure_table(model, engine, threads, 1, res, log=print)
    table_s = time.perf_counter() - start
    rng = random.Random(seed)
    rows = []
    for k in range(plans):
        plan = random_plan(model, rng)
        planned = create_model(family, **kwargs, channel_plan=plan).eval()
        with tempfile.TemporaryDirectory() as tmp:
            measured = measure_model(planned, engine, threads, 1, res, Path(tmp), runs=60)
        raw, corrected = predict(table, plan, corrected=False), predict(table, plan)
        rows.append({"plan": plan, "measured_ms": round(measured, 4), "sum_ms": round(raw, 4),
                     "predicted_ms": round(corrected, 4)})
        print(f"  {name} {engine} plan {k}: measured {measured:.3f} ms, sum {raw:.3f} "
              f"({100 * (raw / measured - 1):+.1f}%), with constant {corrected:.3f} "
              f"({100 * (corrected / measured - 1):+.1f}%)")
    measured = [r["measured_ms"] for r in rows]
    return {"model": name, "model_kwargs": kwargs, "resolution": res, "engine": engine,
            "threads": threads, "batch": 1, "table_seconds": round(table_s, 1),
            "pieces_timed": len(table["entries"]), "overhead_ms": table["overhead_ms"],
            "correction": table["correction"], "versions": table["versions"],
            "sum": summary([r["sum_ms"] / r["measured_ms"] - 1 for r in rows], measured, [r["sum_ms"] for r in rows]),
            "with_constant": summary([r["predicted_ms"] / r["measured_ms"] - 1 for r in rows], measured,
                                     [r["predicted_ms"] for r in rows]),
            "plans": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2,mobilenet_v3_small")
    ap.add_argument("--engines", default="onnxruntime,int8")
    ap.add_argument("--plans", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the 28 px Fashion-MNIST model, 3 plans")
    ap.add_argument("--out", default="benchmarks/results/latency_table.json")
    args = ap.parse_args()
    tune_allocator()
    models = ["fmnist_v2_035"] if args.quick else args.models.split(",")
    plans = 3 if args.quick else args.plans
    machine = describe_machine(args.threads)
    results = [run(m, e, plans, args.threads, args.seed) for m in models for e in args.engines.split(",")]
    print(f"\n{'model':22s} {'engine':12s} {'pieces':>6s} {'table s':>8s}   sum: {'med|err|':>8s} {'±5%':>5s} "
          f"{'±10%':>5s} {'rho':>5s}   +constant: {'med|err|':>8s} {'±5%':>5s} {'±10%':>5s} {'rho':>5s}")
    for r in results:
        a, b = r["sum"], r["with_constant"]
        print(f"{r['model']:22s} {r['engine']:12s} {r['pieces_timed']:6d} {r['table_seconds']:8.0f}   "
              f"     {a['median_abs_error']:8.1%} {a['within_5pct']:5.0%} {a['within_10pct']:5.0%} {a['spearman']:5.2f}"
              f"              {b['median_abs_error']:8.1%} {b['within_5pct']:5.0%} {b['within_10pct']:5.0%} {b['spearman']:5.2f}")
    doc = {"command": "python benchmarks/latency_table.py " + " ".join(sys.argv[1:]),
           "machine": machine, "machine_after": describe_machine(args.threads), "results": results}
    atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
