"""`mobilenets train`: flags and recipe resolution (defaults < recipe < --set < named flags)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ..core.errors import MobileNetsError
from ..models.mobilenet import model_defaults
from ..train.loop import TrainingStopped, train
from ..train.recipes import DEFAULTS, default_recipe, list_recipes, load_recipe, parse_set
from ..train.tasks import TRAIN_TASKS, record_keys
from .common import count_or_fraction


def resolve_config(args: argparse.Namespace, explicit: dict) -> dict:
    """defaults < recipe < --set < named flags."""
    recipe_name = args.recipe or default_recipe(explicit.get("task"), explicit.get("model"), args.data)
    cfg = {**DEFAULTS, **load_recipe(recipe_name), **parse_set(args.set), **explicit}
    cfg["recipe"] = recipe_name
    return cfg




# ---------------------------------------------------------------------------------------------
# CLI

NAMED_FLAGS = {"task": "task", "model": "model", "width_mult": "width_mult", "small_input": "small_input",
               "data": "data", "data_dir": "data_dir", "epochs": "epochs",
               "batch_size": "batch_size", "lr": "lr", "seed": "seed", "workers": "workers",
               "strict": "strict", "amp": "amp", "compile": "compile", "sync_bn": "sync_bn",
               "save_every_steps": "save_every_steps", "device": "device", "in_chans": "in_chans",
               "backbone": "backbone", "val_fraction": "val_fraction", "pretrained": "pretrained"}


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a classifier (Fashion-MNIST, image folder), a detector "
                                      "(COCO folder) or a segmenter (VOC folder)")
    p.add_argument("--task", choices=TRAIN_TASKS, default=None,
                   help="default: what --model does (classification for mobilenet_v2)")
    p.add_argument("--model", default=None, help="registered model name (default mobilenet_v2; "
                                                 "the detection / segmentation recipe's for --task)")
    p.add_argument("--width-mult", type=float, default=None, help="width multiplier α")
    p.add_argument("--small-input", action="store_true", default=None,
                   help="total stride 8 instead of 32, for 28–32 px images")
    p.add_argument("--in-chans", type=int, default=None, help="1 (grayscale) or 3")
    p.add_argument("--backbone", default=None, metavar="WEIGHTS",
                   help="start from another model's stem/blocks/last_conv (e.g. a classifier's "
                        "best.safetensors under a detector or segmenter)")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="TAG",
                   help="start from the model's published ImageNet weights (a tag, e.g. "
                        "IMAGENET1K_V1; default: its default tag; see `mobilenets models --pretrained`); "
                        "another class count drops the classifier, --in-chans 1 adapts the stem")
    p.add_argument("--data", default=None, help="'fashion-mnist' or an ImageFolder directory; a COCO "
                                                "folder for detection, a VOC folder for segmentation")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")
    p.add_argument("--val-fraction", type=count_or_fraction, default=None, metavar="F_OR_N",
                   help="the share of the training images held out as the val split that scores "
                        "every epoch and picks best.safetensors (test data, or a detection or "
                        "segmentation folder's val split, is scored once, at the end): a fraction "
                        "(0.1) or a number of images (5000); 0: none, keep the final epoch; default "
                        "5000 for Fashion-MNIST, 0.1 for folders without val/ and for detection and "
                        "segmentation")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--recipe", default=None,
                   help=f"recipe name ({', '.join(list_recipes())}) or a JSON file; default: the "
                        "task's (detection, segmentation), else fashion-mnist for Fashion-MNIST, "
                        "modern otherwise")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe value, e.g. --set label_smoothing=0.1")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--resume", default=None, help="run directory or last.pt to continue")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for image folders")
    p.add_argument("--strict", action="store_true", default=None,
                   help="unreadable images are fatal before training instead of skipped")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None, help="autocast dtype")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--sync-bn", action="store_true", default=None, help="batch norm over all ranks")
    p.add_argument("--save-every-steps", type=int, default=None, help="also checkpoint every N steps")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    if not args.out and not args.resume:
        raise MobileNetsError("train needs --out DIR (or --resume DIR)")
    if args.resume and (args.recipe or args.set):
        given = " ".join(([f"--recipe {args.recipe}"] if args.recipe else [])
                         + [f"--set {kv}" for kv in args.set])
        raise MobileNetsError(f"--resume {args.resume} continues with the run's own recorded recipe; "
                              f"{given} would change it mid-run and is refused; start a new run "
                              "with --out (and --backbone or --model) for another recipe")
    explicit = {key: getattr(args, attr) for key, attr in NAMED_FLAGS.items()
                if getattr(args, attr) is not None}
    if args.resume and not args.recipe:
        cfg = {**DEFAULTS, **explicit, "recipe": "resumed"}
    else:
        cfg = resolve_config(args, explicit)
    if "model" in explicit and "width_mult" not in explicit and not args.resume:
        if "width_mult" in model_defaults(explicit["model"]):
            cfg["width_mult"] = None  # mobilenet_v2_100 means α = 1.0, whatever the recipe says
    cfg["_explicit"] = list(explicit)
    try:
        report = train(cfg, args.out or args.resume if not (args.resume and Path(args.resume).is_file())
                       else (args.out or Path(args.resume).parent), args.resume)
    except TrainingStopped as e:
        print(f"mobilenets: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # a stop signal before the loop: no step was trained in this process
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"mobilenets: interrupted ({signal.Signals(signum).name}) during start-up, before the first "
              "training step", file=sys.stderr)
        return 128 + signum
    if report.get("interrupted"):
        # The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM.
        return 128 + signal.Signals[report["signal"]]
    splits = [k for k in ("top1_split", "selection", "val_top1", "test_top1") if k in report]
    shown = ("model", "task", "epochs", *record_keys(report["task"]), *splits, "train_seconds", "params",
             "madds", "skipped_files")
    print(json.dumps({k: report[k] for k in shown}))
    return 0
