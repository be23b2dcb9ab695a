"""What every verb shares: the parser class that exits with one line, and the model options."""
from __future__ import annotations

import argparse
import json
import warnings


class Parser(argparse.ArgumentParser):
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
    p.add_argument("--plan", dest="channel_plan", type=plan_file, default=None,
                   help="a channel plan: JSON file of per-layer widths (mobilenets.models.plan)")


def add_pretrained_option(p: argparse.ArgumentParser) -> None:
    """`--pretrained [TAG]` for verbs that take a model name: its published ImageNet weights."""
    p.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="TAG",
                   help="with a model name: its published ImageNet weights (a tag, e.g. IMAGENET1K_V1; "
                        "default: its default tag; see `mobilenets models --pretrained`)")


def model_kwargs(args: argparse.Namespace) -> dict:
    names = ("width_mult", "num_classes", "in_chans", "small_input", "minimalistic", "channel_plan", "pretrained")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def plan_file(path: str) -> dict:
    """A --plan value: a JSON file holding a channel plan, or a result file whose
    model_kwargs carry one (what `adapt` and `search` write)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{path}: not a readable JSON channel plan ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("channel_plan"), dict):
        data = data["channel_plan"]
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{path}: a channel plan is a JSON object, not {type(data).__name__}")
    return data


def one_line_warnings() -> None:
    """Show warnings as one `warning: ...` line each, without source lines: the command line's
    own process, so the setting is the CLI's to make."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


def scale_list(text: str) -> tuple[float, ...]:
    """A --scales value: comma-separated resize factors in (0, 4] (4× already takes 16× the memory)."""
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(0 < s <= 4 for s in scales):
        raise argparse.ArgumentTypeError(f"{text!r}: each scale must be in (0, 4]")
    return scales


def count_or_fraction(text: str) -> int | float:
    """A --val-fraction value: an integer is a number of images, anything else a fraction."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of images nor a fraction") from None
