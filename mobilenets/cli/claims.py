"""The papers' trained and measured claims as verbs: `relu6-int8`, `dead-kernels`, `last-stage`.

The work is done in analysis/relu6_int8.py, dead_kernels.py and last_stage.py; this module
parses flags, writes the results JSON and prints a table or the `--json` object.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..analysis.ablate import Schedule
from ..analysis.dead_kernels import (ABSOLUTE, RELATIVE, analyze_files, plot_dead_kernels,
                                     train_matched_pair)
from ..analysis.dead_kernels import DEFAULT_SCHEDULE as DEAD_SCHEDULE
from ..analysis.last_stage import FAMILIES, last_stage_study, plot_last_stage
from ..analysis.relu6_int8 import (CALIBRATION_IMAGES, plot_relu6_int8, run_relu6_int8,
                                   write_results)
from ..analysis.relu6_int8 import DEFAULT_SCHEDULE as INT8_SCHEDULE
from ..core.figures import check_figure_path

RESULTS = Path("benchmarks/results/claims")


def _schedule_flags(p, default: Schedule) -> None:
    p.add_argument("--epochs", type=int, default=default.epochs)
    p.add_argument("--batch-size", type=int, default=default.batch_size)
    p.add_argument("--limit-train", type=int, default=default.limit_train,
                   help=f"train on this many images (0: all; default {default.limit_train})")
    p.add_argument("--limit-test", type=int, default=default.limit_test,
                   help=f"test on this many images (0: all; default {default.limit_test})")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")


def _outputs(p, name: str) -> None:
    p.add_argument("--out", default=None, help="figure file (e.g. claims.png)")
    p.add_argument("--results", default=str(RESULTS / f"{name}.json"),
                   help="the results JSON (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_commands(sub) -> None:
    p = sub.add_parser("relu6-int8", help="V2 §4: is ReLU6 more robust to int8 than ReLU? "
                                          "(Fashion-MNIST, fp32 vs int8 top-1 per arm)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (0, 1, ...)")
    p.add_argument("--runs", default="runs/claims/relu6-int8",
                   help="run directories, int8 files and results.jsonl")
    p.add_argument("--calib-size", type=int, default=CALIBRATION_IMAGES,
                   help="training images that calibrate the int8 activation ranges")
    _schedule_flags(p, INT8_SCHEDULE)
    _outputs(p, "relu6_int8")
    p.set_defaults(func=_cmd_relu6_int8)

    p = sub.add_parser("dead-kernels", help="fraction of near-zero depthwise kernels in trained "
                                            "weights (V1 vs V2)")
    p.add_argument("weights", nargs="*", help="trained .safetensors files")
    p.add_argument("--train", action="store_true",
                   help="first train V2 α 0.35 and the V1 of equal MAdds and add their files")
    p.add_argument("--seed", type=int, default=0, help="seed of the --train runs")
    p.add_argument("--runs", default="runs/claims/dead-kernels", help="run directories for --train")
    p.add_argument("--relative", type=float, default=RELATIVE,
                   help="dead below this fraction of the layer's median kernel norm")
    p.add_argument("--absolute", type=float, default=ABSOLUTE, help="dead below this L2 norm")
    _schedule_flags(p, DEAD_SCHEDULE)
    _outputs(p, "dead_kernels")
    p.set_defaults(func=_cmd_dead_kernels)

    p = sub.add_parser("last-stage", help="V3 §5.3: efficient vs original last stage, and where "
                                          "h-swish starts (Table 5)")
    p.add_argument("--family", default="mobilenet_v3_large", choices=list(FAMILIES))
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads while timing")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per variant (median)")
    p.add_argument("--no-latency", action="store_true", help="analytic columns only")
    _outputs(p, "last_stage")
    p.set_defaults(func=_cmd_last_stage)


def _command_line(argv_name: str, args, keys) -> str:
    """The command that reproduces a results file, for the file itself."""
    parts = ["mobilenets", argv_name]
    for key in keys:
        value = getattr(args, key)
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value not in (None, False):
            parts += [flag, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return " ".join(shlex.quote(p) for p in parts)


def _schedule(args) -> Schedule:
    return Schedule(args.epochs, args.batch_size, args.limit_train, args.limit_test)


def _written_as_json(result: dict, args, plot) -> bool:
    """Write the results file and the figure; print the JSON object when asked (then the caller
    prints no table)."""
    write_results(result, args.results)
    if args.out:
        plot(result, args.out)
    if args.json:
        print(json.dumps(result))
    return args.json


SCHEDULE_KEYS = ("epochs", "batch_size", "limit_train", "limit_test")


def _cmd_relu6_int8(args) -> int:
    if args.out:
        check_figure_path(args.out)
    try:
        summary = run_relu6_int8(args.runs, args.seeds, _schedule(args), args.calib_size,
                                 args.data_dir, progress=not args.json)
    except KeyboardInterrupt:
        print(f"interrupted; finished runs are kept in {Path(args.runs) / 'results.jsonl'}, rerun "
              "the same command to continue", file=sys.stderr)
        return 130
    summary["command"] = _command_line("relu6-int8", args, ("seeds", "runs", "calib_size",
                                                           *SCHEDULE_KEYS, "out", "results"))
    if _written_as_json(summary, args, plot_relu6_int8):
        return 0
    print(f"MobileNetV2 α {summary['width_mult']} on Fashion-MNIST, {summary['seeds']} seed(s); "
          "top-1 of the ONNX files (%)")
    print(f"  {'arm':6s} {'fp32':>16s} {'int8':>16s} {'drop (points)':>16s}")
    for a in summary["arms"]:
        cells = [_pm(a[k]) for k in ("top1_fp32", "top1_int8", "drop")]
        print(f"  {a['label']:6s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s}")
    if summary["weights_7bit"]:
        print("  weights quantized to 7 bits: this CPU has no VNNI (see deploy/quantize.py)")
    print(f"wrote {args.results}" + (f" and {args.out}" if args.out else ""))
    return 0


def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f}" + ("" if stat["std"] is None else f" ± {100 * stat['std']:.2f}")


def _cmd_dead_kernels(args) -> int:
    if args.out:
        check_figure_path(args.out)
    paths = list(args.weights)
    if args.train:
        paths += [str(p) for p in train_matched_pair(args.runs, _schedule(args), args.seed,
                                                     args.data_dir, progress=not args.json)]
    result = analyze_files(paths, args.relative, args.absolute)
    keys = ("relative", "absolute") + (("train", "seed", "runs", *SCHEDULE_KEYS) if args.train else ())
    result["command"] = _command_line("dead-kernels", args, keys + ("out", "results"))
    if args.weights:
        result["command"] = result["command"].replace(
            "mobilenets dead-kernels", "mobilenets dead-kernels " + " ".join(map(shlex.quote, args.weights)), 1)
    if _written_as_json(result, args, plot_dead_kernels):
        return 0
    print(f"depthwise kernels with L2 norm < {args.relative:g} × the layer's median (relative) "
          f"or < {args.absolute:g} (absolute); weights as trained, BN not folded")
    for m in result["models"]:
        print(f"  {m['path']}: {m['model']} α={m['width_mult']}, {m['depthwise_layers']} layers, "
              f"{m['kernels']} kernels: {100 * m['fraction_relative']:.2f}% relative, "
              f"{100 * m['fraction_absolute']:.2f}% absolute")
    print(f"wrote {args.results}" + (f" and {args.out}" if args.out else ""))
    return 0


def _cmd_last_stage(args) -> int:
    if args.out:
        check_figure_path(args.out)
    result = last_stage_study(args.family, args.width_mult, args.resolution,
                              latency=not args.no_latency, threads=args.threads,
                              repeats=args.repeats)
    result["command"] = _command_line("last-stage", args, ("family", "width_mult", "resolution",
                                                          "threads", "repeats", "no_latency",
                                                          "out", "results"))
    if _written_as_json(result, args, plot_last_stage):
        return 0
    timed = not args.no_latency
    print(f"{result['family']} α {result['width_mult']:g} at {result['resolution']} px" +
          (f"; latency batch 1, {result['threads']} thread(s), median ms" if timed else ""))
    for r in result["variants"]:
        line = f"  {r['label']:62s} {r['params']:>10,d} params {r['madds'] / 1e6:>8.2f}M MAdds"
        if timed:
            line += f" {r['latency_ms']:>8.2f} ms"
        print(line)
    if "last_stage" in result:
        s = result["last_stage"]
        print(f"  the efficient last stage saves {s['madds_saved'] / 1e6:.2f}M MAdds "
              f"(paper: ~30M, difference {s['madds_saved_minus_paper'] / 1e6:+.2f}M)" +
              (f" and {s['latency_saved_ms']:.2f} ms ({100 * s['latency_saved_fraction']:.1f}% of "
               "the original's time; paper: 7 ms, 11% on a phone)" if timed else ""))
    print(f"wrote {args.results}" + (f" and {args.out}" if args.out else ""))
    return 0
