"""Verbs about the models themselves: `models`, `profile`, `paper-tables`, `convert`."""
from __future__ import annotations

import json

from ..analysis.paper_sections import render_document
from ..core.io import atomic_write_text
from ..models.convert import SOURCES, convert_file
from ..models.mobilenet import check_resolution, create_model, list_models, load_model
from ..models.profile import profile
from ..models.registry_weights import by_name
from .common import add_model_options, model_kwargs


def add_commands(sub) -> None:
    p = sub.add_parser("models", help="every registered model with params, MAdds, peak memory")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*v3*'")
    p.add_argument("--json", action="store_true")
    p.add_argument("--pretrained", action="store_true",
                   help="the published ImageNet weights (create_model('name.tag', pretrained=True)) "
                        "with their upstream's top-1/top-5")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("profile", help="parameters, multiply-adds and activation memory")
    p.add_argument("model", help="a registered model name or a .safetensors weights file")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size (default: the model's own, 224 for V1-V3, up to 384 for V4)")
    p.add_argument("--layers", action="store_true", help="one row per conv / linear layer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(p)
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("paper-tables", help="the papers' figures beside ours (markdown)")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.set_defaults(func=_cmd_paper_tables)

    p = sub.add_parser("convert", help="torchvision / timm / Keras weights → mobilenets safetensors")
    p.add_argument("file", help="source weights: .pth/.safetensors (torchvision, timm), .h5/.weights.h5 (Keras)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES)
    p.add_argument("--model", required=True, help="mobilenets model name, e.g. mobilenet_v3_large")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--tf", action="store_true", default=None,
                   help="timm tf_* weights (TF padding and BN eps); default: guessed from "
                        "'tf_mobilenet' in the path")
    p.add_argument("--resolution", type=int, default=None,
                   help="input size the weights were trained at (default: the model's, e.g. 256 "
                        "for mobilenet_v4_conv_medium, else 224)")
    add_model_options(p)
    p.set_defaults(func=_cmd_convert)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _cmd_models(args) -> int:
    if args.pretrained:
        return _list_pretrained(args)
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


def _list_pretrained(args) -> int:
    entries = by_name()
    rows = [dict(tag=name, source=entries[name].source, resolution=entries[name].resolution,
                 top1=entries[name].top1, top5=entries[name].top5, license=entries[name].license,
                 url=entries[name].location)
            for name in list_models(args.pattern, pretrained=True)]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'tag':62s} {'source':11s} {'input':>5s} {'top-1':>6s} {'top-5':>6s}")
    for r in rows:
        accuracy = "".join(f" {v:>6.2f}" if v is not None else f" {'-':>6s}" for v in (r["top1"], r["top5"]))
        print(f"{r['tag']:62s} {r['source']:11s} {r['resolution']:>5d}{accuracy}")
    print("top-1/top-5: ImageNet-1k validation as each upstream publishes it (torchvision's weights "
          "metadata, timm's results-imagenet.csv); '-': none published")
    return 0


def _cmd_profile(args) -> int:
    if args.model.endswith(".safetensors"):
        model, _ = load_model(args.model, **model_kwargs(args))
    else:
        model = create_model(args.model, **model_kwargs(args))
    resolution = (args.resolution if args.resolution is not None
                  else getattr(model, "pretrained_cfg", {}).get("resolution", 224))
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
    text = render_document()
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_convert(args) -> int:
    meta = convert_file(args.source, args.file, args.out, args.model, tf=args.tf,
                        resolution=args.resolution, **model_kwargs(args))
    pre = meta["preprocessing"]
    print(f"wrote {args.out}: {meta['model']} {meta['model_kwargs']} from {meta['source']['framework']}; "
          f"input {pre['resolution']} px (resize {pre['resize']}), mean {list(pre['mean'])}, "
          f"std {list(pre['std'])}")
    return 0
