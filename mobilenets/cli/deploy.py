"""Verbs that turn a trained model into something that runs elsewhere: `export`, `quantize`,
`bench`, `predict`, `verify`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from torch import nn

from ..deploy.bench import BACKENDS, format_table, run_bench
from ..deploy.export import FORMATS, export, preprocessing_of, resolve_model
from ..deploy.predict import Predictor, predict_image
from ..deploy.mobile import describe_delegation
from ..deploy.openvino import quantize_openvino_checkpoint
from ..deploy.quantize import CALIBRATION_METHODS, quantize_checkpoint, quantize_pte_checkpoint
from ..deploy.task_export import export_onnx
from ..deploy.verify import describe, verify_file
from ..core.errors import MobileNetsError
from ..core.io import atomic_write_text, check_writable
from ..models.weights import task_of
from .common import add_model_options, add_pretrained_option, model_kwargs


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as ONNX, TorchScript, torch.export, "
                                      "ExecuTorch (.pte) or LiteRT (.tflite)")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or a model name (random weights; "
                                      "with --pretrained, its published ones)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported file against PyTorch")
    add_model_options(p)
    add_pretrained_option(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("quantize", help="int8 ONNX (ONNX Runtime or OpenVINO) or ExecuTorch .pte by "
                                        "static quantization with a calibration set")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or a model name (random weights; "
                                      "with --pretrained, its published ones)")
    p.add_argument("--data", default="fashion-mnist",
                   help="'fashion-mnist' or a .npy file of uint8 images at the model's input size")
    p.add_argument("--out", required=True, help="output .onnx file (.pte with --format executorch)")
    p.add_argument("--format", choices=("onnx", "openvino", "executorch"), default="onnx",
                   help="onnx: ONNX Runtime QDQ; openvino: NNCF's int8 .onnx for OpenVINO; "
                        "executorch: XNNPACK int8 .pte (PT2E, minmax only)")
    p.add_argument("--calib-size", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax")
    p.add_argument("--eval-size", type=int, default=10000,
                   help="test images for the fp32/int8 accuracy check (0: skip)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning (fake-quant) before quantizing")
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    add_pretrained_option(p)
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("bench", help="latency / throughput of our backends and the peers")
    p.add_argument("model", help="model name (random weights, BN calibrated on Fashion-MNIST), "
                                 ".safetensors checkpoint, .onnx, .pte or .tflite file")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--backends", default="eager,onnxruntime,int8",
                   help=f"comma-separated, from {','.join(BACKENDS)}")
    p.add_argument("--vs", default="", help="peers, comma-separated: torchvision, timm")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the JSON list instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON list to this file")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("predict", help="top-k classes of images with any saved model form; boxes or "
                                        "masks drawn for a detector / segmenter")
    p.add_argument("model", help=".safetensors, .onnx (fp32/int8), .pt2, TorchScript (.ts/.pt), "
                                 "ExecuTorch .pte (fp32/int8) or LiteRT .tflite file")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="detector / segmenter: the PNG drawn (one image) or a folder "
                                               "for IMAGE_pred.png files (default: the current folder)")
    p.add_argument("--min-score", type=float, default=0.3, help="detector: the lowest score shown")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("verify", help="what each model file is and whether its content matches "
                                       "the checksum it records (exit 1 if any does not)")
    p.add_argument("files", nargs="+", help="model files: .safetensors, .onnx, .ts, .pt2, .pte, .tflite")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args) -> int:
    reports = []
    for file in args.files:
        reports.append(verify_file(file))
        if not args.json:
            print(describe(reports[-1]), flush=True)
    if args.json:
        print(json.dumps(reports))
    return 0 if all(r["ok"] for r in reports) else 1


def _cmd_export(args) -> int:
    model, meta = resolve_model(args.checkpoint, **model_kwargs(args))
    if getattr(model, "task", None) in ("detection", "segmentation"):
        return _export_task_model(model, meta, args)
    r = export(model, args.out, args.format, meta, check=not args.no_check)
    check = "" if args.no_check else (f"; max relative error against the float64 model "
                                      f"{r['max_rel_error']:.1e}, PyTorch float32's "
                                      f"{r['fp32_rel_error']:.1e}")
    print(f"wrote {r['path']} ({args.format}, {os.path.getsize(r['path']) / 2**20:.1f} MiB{check})")
    if r.get("delegation"):
        print(describe_delegation(r["delegation"]))
    return 0


def _export_task_model(model: nn.Module, meta: dict, args) -> int:
    if args.format != "onnx":
        raise MobileNetsError(f"{args.checkpoint}: {model.task} models export to ONNX only, "
                              f"not {args.format}")
    if args.no_check:
        raise MobileNetsError(f"{args.checkpoint}: {model.task} exports are always checked in "
                              "ONNX Runtime; drop --no-check")
    resolution = preprocessing_of(model, meta)["resolution"]
    r = export_onnx(model, args.out, resolution, classes=meta.get("classes"))
    print(f"wrote {r['path']} (onnx, {model.task}, outputs {', '.join(r['outputs'])}, "
          f"{resolution} px, {os.path.getsize(r['path']) / 2**20:.1f} MiB; max relative error "
          f"against the float64 model {r['max_rel_error']:.1e}, allowed {r['allowed_rel_error']:.1e})")
    return 0


def _cmd_quantize(args) -> int:
    if args.calib_size < 1:
        raise MobileNetsError(f"--calib-size {args.calib_size}: allowed: integer >= 1")
    model, meta = resolve_model(args.checkpoint, **model_kwargs(args))
    if args.format == "executorch":
        return _quantize_pte(model, meta, args)
    if args.format == "openvino":
        return _quantize_openvino(model, meta, args)
    s = quantize_checkpoint(model, meta, args.out, args.data, args.calib_size, args.method,
                            args.eval_size, args.qat_steps if args.qat else 0)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"wrote {s['out']} (int8 QDQ, {s['calibration_images']} calibration images, {s['method']})")
    _print_accuracy(s)
    return 0


def _print_accuracy(s: dict, where: str = "") -> None:
    """The fp32/int8 test top-1 line of a quantize summary, when it was scored."""
    if "top1_int8" in s:
        print(f"top-1 on {s['eval_images']} test images{where}: fp32 {s['top1_fp32']:.2f}%, "
              f"int8 {s['top1_int8']:.2f}% ({s['top1_int8'] - s['top1_fp32']:+.2f} points)")


def _quantize_openvino(model: nn.Module, meta: dict, args) -> int:
    if args.method != "minmax":
        raise MobileNetsError(f"--method {args.method}: the openvino format calibrates with "
                              "minmax only (NNCF)")
    if Path(args.out).suffix != ".onnx":
        raise MobileNetsError(f"--out {args.out}: the openvino format writes an .onnx file")
    s = quantize_openvino_checkpoint(model, meta, args.out, args.data, args.calib_size, args.eval_size,
                                     args.qat_steps if args.qat else 0)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"wrote {s['out']} (OpenVINO int8 by NNCF, {s['calibration_images']} calibration images)")
    _print_accuracy(s, " on OpenVINO")
    return 0


def _quantize_pte(model: nn.Module, meta: dict, args) -> int:
    if args.method != "minmax":
        raise MobileNetsError(f"--method {args.method}: the executorch format calibrates with "
                              "minmax only")
    s = quantize_pte_checkpoint(model, meta, args.out, args.data, args.calib_size, args.eval_size,
                                args.qat_steps if args.qat else 0)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"wrote {s['out']} (executorch int8, {s['calibration_images']} calibration images, "
          f"minmax; {os.path.getsize(s['out']) / 2**20:.1f} MiB; "
          f"{describe_delegation(s['delegation'])})")
    print(f"top-1 agreement with fp32 on the calibration images: {s['agreement']:.1f}%")
    _print_accuracy(s)
    return 0


def _cmd_bench(args) -> int:
    backends = [b for b in args.backends.split(",") if b]
    vs = [v for v in args.vs.split(",") if v]
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if args.out:
        check_writable(args.out)   # before the minutes of measuring
    rows, machine = run_bench(args.model, tuple(args.batch), backends, vs, args.threads,
                              args.repeats, resolution=args.resolution, log=log)
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(rows, machine))
    return 0


def _cmd_predict(args) -> int:
    """One line per file, starting with its name; exit 0 if any file was predicted."""
    if task_of(args.model):
        return _predict_task(args)
    if args.out is not None:
        raise MobileNetsError(f"--out draws boxes or masks; {args.model} is not a detection or "
                              "segmentation weights file")
    if args.topk < 1:
        raise MobileNetsError(f"--topk {args.topk}: allowed: integer >= 1")
    results = []
    for file, top in Predictor(args.model, topk=args.topk).predict_each(args.images):
        results.append((file, top))
        if not args.json:  # each line as soon as its file is done: a long list shows progress
            print(f"{file}: error: {top}" if isinstance(top, str) else
                  f"{file}: " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in top), flush=True)
    if args.json:
        print(json.dumps([{"image": f, "top": r} if isinstance(r, list) else {"image": f, "error": r}
                          for f, r in results]))
    return 0 if any(isinstance(r, list) for _, r in results) else 1


def _predict_task(args) -> int:
    """`mobilenets predict TASK_WEIGHTS IMAGE... [--out PNG or DIR]`: one line per image with
    its detections (or class shares of the pixels) and the PNG drawn; exit 0 if any worked."""
    images = [Path(f) for f in args.images]
    if args.out and len(images) == 1 and Path(args.out).suffix.lower() == ".png":
        pngs = [Path(args.out)]
    else:
        folder = Path(args.out) if args.out else Path(".")
        pngs = [folder / f"{p.stem}_pred.png" for p in images]
    results = []
    for image, png in zip(images, pngs):
        try:
            r = predict_image(args.model, image, png, min_score=args.min_score)
            results.append({"image": str(image), **r, "drawn": str(png)})
        except MobileNetsError as e:
            results.append({"image": str(image), "error": str(e).removeprefix(f"{image}: ")})
        if not args.json:
            print(_task_line(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results))
    return 0 if any("error" not in r for r in results) else 1


def _task_line(r: dict) -> str:
    if "error" in r:
        return f"{r['image']}: error: {r['error']}"
    if "boxes" in r:
        found = ", ".join(f"{label} {score:.2f} [{', '.join(f'{v:.0f}' for v in box)}]"
                          for label, score, box in zip(r["labels"], r["scores"], r["boxes"]))
        return f"{r['image']}: {len(r['boxes'])} objects{': ' + found if found else ''} -> {r['drawn']}"
    total = sum(r["pixels"].values())
    shares = ", ".join(f"{k} {100 * n / total:.1f}%" for k, n in
                       sorted(r["pixels"].items(), key=lambda kv: -kv[1]))
    return f"{r['image']}: {shares} -> {r['drawn']}"
