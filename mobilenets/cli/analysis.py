"""The papers' analyses as verbs: `manifold`, `cost`, `tradeoff`, `fit`, `ablate`.

The work is done in manifold.py, cost.py, tradeoff.py and ablate.py; this module only parses
flags and prints tables or the `--json` objects that scripts rely on.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..analysis.ablate import ABLATIONS, Schedule, count_text, percent_text, run_ablations, write_report
from ..analysis.cost import TABLE2_PAPER, breakdown, layer_costs
from ..analysis.manifold import manifold_experiment, plot_manifold
from ..analysis.tradeoff import BUDGET_KEYS, fit, plot_tradeoff, tradeoff_grid
from ..core.errors import MobileNetsError
from ..core.figures import check_figure_path


def add_commands(sub) -> None:
    p = sub.add_parser("manifold", help="V2 Fig. 1: a spiral through ReLU in n dimensions")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 5, 15, 30],
                   help="embedding dimensions n (default: the paper's 2 3 5 15 30)")
    p.add_argument("--points", type=int, default=1000, help="points on the spiral")
    p.add_argument("--seeds", type=int, default=30, help="random matrices T averaged per n")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--out", default=None, help="figure file, one panel per n (e.g. manifold.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_manifold)

    p = sub.add_parser("cost", help="standard vs depthwise separable convolution (V1 §3.1, "
                                    "Table 2)")
    p.add_argument("--in", dest="in_ch", type=int, default=None, help="input channels M")
    p.add_argument("--out", dest="out_ch", type=int, default=None, help="output channels N")
    p.add_argument("--kernel", type=int, default=None, help="kernel size D_K")
    p.add_argument("--size", type=int, default=None, help="feature map size D_F")
    p.add_argument("--groups", type=int, nargs="+", default=None,
                   help="group counts for the grouped rows (default: 2 4 8 where they divide)")
    p.add_argument("--model", default=None,
                   help="also break this model down by layer kind, like V1 Table 2")
    p.add_argument("--resolution", type=int, default=224, help="input size for --model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_cost)

    p = sub.add_parser("tradeoff", help="params, MAdds, memory, latency over α × ρ")
    _grid_options(p)
    p.add_argument("--no-latency", action="store_true", help="analytic columns only")
    p.add_argument("--backends", nargs="*", default=None,
                   help="deployment backends timed besides eager fp32: onnxruntime, int8 "
                        "(default: both when the deployment module is installed)")
    p.add_argument("--out", default=None, help="log-scale plot (e.g. tradeoff.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_tradeoff)

    p = sub.add_parser("fit", help="the best (α, ρ) within a latency / MAdds / params / memory budget")
    _grid_options(p)
    p.add_argument("--max-latency-ms", type=float, default=None,
                   help="fp32 eager latency of one image, measured on this machine")
    p.add_argument("--max-madds", type=float, default=None, help="e.g. 150e6")
    p.add_argument("--max-params", type=float, default=None, help="e.g. 2e6")
    p.add_argument("--max-memory-kb", type=float, default=None,
                   help="inference memory as V2 Table 3 counts it (largest tensor with split "
                        "expansions, fp16), KB = 1000 B; V2 1.0 at 224 needs 400")
    p.add_argument("--alternatives", type=int, default=4, help="runner-ups to print")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_fit)

    add_ablate_command(sub)


def _grid_options(p) -> None:
    p.add_argument("--family", default="mobilenet_v2",
                   help="mobilenet_v1, mobilenet_v2, mobilenet_v3_large or mobilenet_v3_small")
    p.add_argument("--widths", type=float, nargs="*", default=None,
                   help="width multipliers α (default: the family's published widths)")
    p.add_argument("--resolutions", type=int, nargs="*", default=None,
                   help="input resolutions ρ (default: 96 128 160 192 224)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per latency (median)")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch threads while timing (default 1: the papers time one core)")
    p.add_argument("--checkpoints", nargs="*", default=(),
                   help="trained .safetensors files: their top-1 fills the accuracy column")
    p.add_argument("--small-input", action="store_true", default=None,
                   help="no stride at the stem and first downsampling block (28–32 px inputs)")
    p.add_argument("--minimalistic", action="store_true", default=None,
                   help="MobileNetV3 without SE, h-swish and 5×5 kernels")


def _kwargs(args) -> dict:
    return {k: True for k in ("small_input", "minimalistic") if getattr(args, k)}


def _cmd_manifold(args) -> int:
    if args.out:
        check_figure_path(args.out)
    result = manifold_experiment(args.dims, args.points, args.seeds, args.seed)
    if args.out:
        plot_manifold(args.out, args.dims, args.points, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"x̂ = T⁺ ReLU(T x): {result['points']}-point spiral, mean over {result['seeds']} random T")
    print(f"{'n':>5s} {'ReLU error':>11s} {'(raw)':>8s} {'linear error':>13s}")
    for n, e, raw, lin in zip(result["dims"], result["relu_error"], result["relu_error_raw"],
                              result["linear_error"]):
        print(f"{n:>5d} {e:>11.3f} {raw:>8.3f} {lin:>13.2e}")
    print("error: ‖x̂ − x‖ / ‖x‖ after the best gain and offset (raw: without); "
          "the linear control has no ReLU")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_cost(args) -> int:
    layer_flags = (args.in_ch, args.out_ch, args.kernel, args.size)
    if all(v is None for v in layer_flags) and args.model is None:
        raise MobileNetsError("nothing to cost: give --in, --out, --kernel and --size, or --model")
    result = {}
    if any(v is not None for v in layer_flags):
        missing = [f for f, v in zip(("--in", "--out", "--kernel", "--size"), layer_flags) if v is None]
        if missing:
            raise MobileNetsError(f"a layer needs {', '.join(missing)} as well")
        result = layer_costs(args.in_ch, args.out_ch, args.kernel, args.size, args.groups)
    if args.model:
        result["breakdown"] = breakdown(args.model, args.resolution)
    if args.json:
        print(json.dumps(result))
        return 0
    if "rows" in result:
        s = result["shape"]
        print(f"{s['kernel']}×{s['kernel']} conv, {s['in']} → {s['out']} channels, "
              f"{s['size']}×{s['size']} map")
        print(f"  {'':34s} {'params':>13s} {'MAdds':>16s} {'ratio':>8s}")
        for r in result["rows"]:
            print(f"  {r['name']:34s} {r['params']:>13,d} {r['madds']:>16,d} {r['ratio']:>8.4f}")
        print(f"  separable / standard = {result['ratio']:.6f}; 1/N + 1/D_K² = "
              f"{result['formula_ratio']:.6f} ({1 / result['ratio']:.2f}× less computation)")
    if "breakdown" in result:
        b = result["breakdown"]
        paper = b["model"] == "mobilenet_v1" and b["resolution"] == 224
        print(f"{b['model']} at {b['resolution']} px: {b['madds']:,d} MAdds, {b['params']:,d} weights")
        head = f"  {'type':22s} {'MAdds':>8s} {'params':>8s}"
        print(head + (f"   {'paper: MAdds':>12s} {'params':>8s}" if paper else ""))
        for r in b["rows"]:
            line = f"  {r['name']:22s} {r['madds_pct']:>7.2f}% {r['params_pct']:>7.2f}%"
            if paper and r["kind"] in TABLE2_PAPER:
                pm, pp = TABLE2_PAPER[r["kind"]]
                line += f"   {pm:>11.2f}% {pp:>7.2f}%"
            print(line)
        print("  weights exclude biases and batch norm, as the paper counts them")
        if paper:
            print("  the paper's 1.19% for Conv 3×3 reads 1.91% with the digits swapped: its four "
                  "MAdds shares sum to 99.29%, with 1.91% to 100.01%")
    return 0


def _progress(enabled: bool):
    if not enabled:
        return None

    def show(row):
        lat = f"{row['latency_ms']:.2f} ms" if row["latency_ms"] is not None else "-"
        print(f"  α={row['width_mult']:g} ρ={row['resolution']}: {lat}", file=sys.stderr, flush=True)
    return show


def _print_rows(rows) -> None:
    extra = sorted({k for r in rows for k in r if k.startswith("latency_ms_")})
    cols = (f"{'α':>5s} {'ρ':>4s} {'params':>10s} {'MAdds':>13s} {'T3 KB':>7s} {'eager KB':>9s} "
            f"{'fp32 ms':>8s}")
    cols += "".join(f" {k[len('latency_ms_'):] + ' ms':>14s}" for k in extra) + f" {'top-1':>6s}"
    print(cols)
    for r in rows:
        lat = f"{r['latency_ms']:.2f}" if r["latency_ms"] is not None else "-"
        line = (f"{r['width_mult']:>5g} {r['resolution']:>4d} {r['params']:>10,d} {r['madds']:>13,d} "
                f"{r['memory_table3_bytes_fp16'] / 1000:>7,.0f} {r['peak_memory_bytes_fp32'] / 1000:>9,.0f} "
                f"{lat:>8s}")
        for k in extra:
            line += f" {r[k]:>14.2f}" if r.get(k) is not None else f" {'-':>14s}"
        line += f" {100 * r['top1']:>5.1f}%" if r["top1"] is not None else f" {'-':>6s}"
        print(line)


def _cmd_tradeoff(args) -> int:
    if args.out:
        check_figure_path(args.out)
    rows = tradeoff_grid(args.family, args.widths, args.resolutions, latency=not args.no_latency,
                         repeats=args.repeats, checkpoints=args.checkpoints,
                         model_kwargs=_kwargs(args), progress=_progress(not args.json),
                         backends=args.backends, threads=args.threads)
    if args.out:
        plot_tradeoff(rows, args.out)
    if args.json:
        print(json.dumps({"family": args.family, "rows": rows}))
        return 0
    _print_rows(rows)
    print("T3 KB: V2 Table 3 memory (fp16, split expansions); eager KB: peak fp32 activations of "
          f"one image, both analytic; fp32 ms: eager, batch 1, {args.threads} thread(s), median of "
          f"{args.repeats}, measured on this machine")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _cmd_fit(args) -> int:
    budgets = {k: getattr(args, k) for k in BUDGET_KEYS if getattr(args, k) is not None}
    if not budgets:
        raise MobileNetsError("no budget given; pass at least one of --max-latency-ms, "
                              "--max-madds, --max-params, --max-memory-kb")
    best = fit(args.family, budgets, args.widths, args.resolutions, args.repeats,
               args.checkpoints, args.alternatives, _kwargs(args),
               progress=_progress(not args.json and "max_latency_ms" in budgets), threads=args.threads)
    if args.json:
        print(json.dumps(best))
        return 0
    print(f"best: {best['model']} α={best['width_mult']:g} at {best['resolution']} px "
          f"(ranked by {'top-1' if best['ranked_by'] == 'top1' else 'MAdds, the accuracy proxy'})")
    _print_rows([best, *best["alternatives"]])
    return 0


def add_ablate_command(sub) -> None:
    p = sub.add_parser("ablate", help="the V2/V3 ablations retrained on Fashion-MNIST")
    p.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist"],
                   help="the data set (Fashion-MNIST, the project's CPU benchmark)")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (0, 1, ...)")
    p.add_argument("--out", default="ablations", help="run directories and results.jsonl")
    p.add_argument("--docs", default="docs/ablations.md", help="the markdown report (+ .png chart)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help=f"some of: {', '.join(a.name for a in ABLATIONS)}")
    p.add_argument("--epochs", type=int, default=Schedule.epochs)
    p.add_argument("--batch-size", type=int, default=Schedule.batch_size)
    p.add_argument("--limit-train", type=int, default=0, help="train on this many images (0: all)")
    p.add_argument("--limit-test", type=int, default=0, help="test on this many images (0: all)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_ablate)


def reproduce_command(args) -> str:
    parts = ["mobilenets", "ablate", "--data", args.data, "--seeds", str(args.seeds),
             "--out", args.out, "--docs", args.docs, "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size)]
    if args.limit_train:
        parts += ["--limit-train", str(args.limit_train)]
    if args.limit_test:
        parts += ["--limit-test", str(args.limit_test)]
    if args.only:
        parts += ["--only", *args.only]
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_ablate(args) -> int:
    check_figure_path(Path(args.docs).with_suffix(".png"))
    schedule = Schedule(args.epochs, args.batch_size, args.limit_train, args.limit_test)
    try:
        summary = run_ablations(args.out, args.seeds, schedule, args.only, args.data_dir,
                                progress=not args.json)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are kept in {Path(args.out) / 'results.jsonl'}, rerun the "
              "same command to continue", file=sys.stderr)
        return 130
    docs, chart = write_report(summary, args.docs, reproduce_command(args))
    if args.json:
        print(json.dumps(summary))
        return 0
    for ab in summary["ablations"]:
        print(ab["title"])
        for a in ab["arms"]:
            print(f"  {a['label']:12s} {percent_text(a['top1_mean'], a['top1_std']):>16s}%  "
                  f"({a['madds'] / 1e6:.1f}M MAdds, {count_text(a['runs'], 'run')})")
        print(f"  {ab.get('claim_source', 'the paper')}: {ab['claim']} — "
              f"{'held' if ab['held'] else 'did not hold'}"
              f"{' clearly' if ab['clear'] else ''}")
    print(f"wrote {docs} and {chart}")
    return 0
