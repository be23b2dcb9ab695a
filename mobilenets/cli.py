"""`mobilenets <verb>`: each feature module adds its verbs with `add_commands(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from .errors import MobileNetsError

# Modules that contribute verbs; each has add_commands(subparsers) whose parsers set `func`.
COMMAND_MODULES = ("mobilenets.cli", "mobilenets.convert", "mobilenets.analysis", "mobilenets.scenes",
                   "mobilenets.export", "mobilenets.quantize", "mobilenets.bench", "mobilenets.predict",
                   "mobilenets.train", "mobilenets.evaluate")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, like our own errors
        self.exit(2, f"mobilenets: error: {message}\n")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model-building options every verb that builds a model accepts."""
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier α")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--small-input", action="store_true", default=None,
                   help="no stride at the stem and first downsampling block (28–32 px inputs)")
    p.add_argument("--minimalistic", action="store_true", default=None,
                   help="MobileNetV3 without SE, h-swish and 5×5 kernels")


def model_kwargs(args: argparse.Namespace) -> dict:
    names = ("width_mult", "num_classes", "in_chans", "small_input", "minimalistic")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def add_commands(sub) -> None:
    p = sub.add_parser("models", help="every registered model with params, MAdds, peak memory")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*v3*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("profile", help="parameters, multiply-adds and activation memory")
    p.add_argument("model")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size (default: the model's own, 224 for V1-V3, up to 384 for V4)")
    p.add_argument("--layers", action="store_true", help="one row per conv / linear layer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(p)
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("paper-tables", help="the papers' figures beside ours (markdown)")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.set_defaults(func=_cmd_paper_tables)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _cmd_models(args) -> int:
    from .models import create_model, list_models
    from .profile import profile
    rows = []
    for name in list_models(args.pattern):
        model = create_model(name)
        resolution = getattr(model, "pretrained_cfg", {}).get("resolution", 224)
        r = profile(model, resolution)
        rows.append(dict(model=name, resolution=resolution, params=r["params"],
                         params_without_bn=r["params_without_bn"], madds=r["madds"],
                         memory_table3_bytes_fp16=r["memory_table3_bytes_fp16"],
                         peak_memory_bytes_fp32=r["peak_memory_bytes_fp32"]))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'model':32s} {'input':>5s} {'params':>11s} {'no-BN':>11s} {'MAdds':>13s} {'T3 mem':>9s} "
          f"{'eager fp32':>11s}")
    for r in rows:
        print(f"{r['model']:32s} {r['resolution']:>5d} {_fmt_int(r['params']):>11s} "
              f"{_fmt_int(r['params_without_bn']):>11s} "
              f"{_fmt_int(r['madds']):>13s} {r['memory_table3_bytes_fp16'] / 1000:>8.0f}K "
              f"{r['peak_memory_bytes_fp32'] / 2**20:>9.1f}MiB")
    print("params: all trainable; no-BN: the papers' convention; MAdds at the model's input size; T3 mem: V2 "
          "Table 3 memory (fp16, K = 1000 B); eager fp32: peak activations of one image")
    return 0


def _cmd_profile(args) -> int:
    from .models import check_resolution, create_model
    from .profile import profile
    model = create_model(args.model, **model_kwargs(args))
    resolution = args.resolution or getattr(model, "pretrained_cfg", {}).get("resolution", 224)
    check_resolution(model, resolution)
    r = profile(model, resolution)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} (width {r['width_mult']}, {r['resolution']}×{r['resolution']})")
    print(f"  params             {_fmt_int(r['params'])}  (without BN: {_fmt_int(r['params_without_bn'])})")
    print(f"  multiply-adds      {_fmt_int(r['madds'])}")
    print(f"  Table 3 memory     {r['memory_table3_bytes_fp16'] / 1000:.0f}K (fp16, V2 §5.1)")
    print(f"  eager peak memory  {r['peak_memory_bytes_fp16'] / 2**20:.2f} MiB fp16, "
          f"{r['peak_memory_bytes_fp32'] / 2**20:.2f} MiB fp32 (one image)")
    print("  Table 3 rows: " + ", ".join(f"{t['size']}: {t['channels']}ch/{t['bytes_fp16'] / 1000:.0f}K"
                                         for t in r["memory_table3"]))
    if args.layers:
        print(f"\n  {'layer':34s} {'kind':10s} {'output':>16s} {'params':>10s} {'MAdds':>13s}")
        for layer in r["layers"]:
            shape = "×".join(map(str, layer["output_shape"]))
            print(f"  {layer['name']:34s} {layer['kind']:10s} {shape:>16s} "
                  f"{_fmt_int(layer['params']):>10s} {_fmt_int(layer['madds']):>13s}")
    return 0


def _cmd_paper_tables(args) -> int:
    from .paper import render_markdown
    text = render_markdown()
    if args.out:
        from .io import atomic_write_text
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mobilenets",
                     description="MobileNet V1, V2, V3 and V4 built from the papers' tables.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .runtime import tune_allocator
    tune_allocator()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MobileNetsError as e:
        print(f"mobilenets: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
