"""Training recipes: the settings every run reads (defaults < recipe file < overrides), their
validation, and the task a model trains for."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..datasets.classification import val_held_out_beside_test
from ..datasets.splits import Augment, check_val_fraction
from ..core.errors import MobileNetsError
from ..models.mobilenet import list_models, model_task
from ..models.specs import check_width_mult
from .optim import WEIGHT_DECAY_ON
from .tasks import DENSE_VAL_FRACTION, TRAIN_TASKS

RECIPES_DIR = Path(__file__).parent / "recipes"

# The largest input side a run accepts: at 4096 px MobileNetV2's early layers already hold a
# few GiB of activations per training image, so a larger value is a typo, not a plan.
MAX_RESOLUTION = 4096
# DataLoader workers per CPU core: a few keep decoding ahead of the model; many more only fork
# processes that compete for the same cores and memory.
WORKERS_PER_CPU = 4

# Recipe keys a resumed run must agree on: those that describe the model, and val_fraction,
# which decides the images it trains on.
MODEL_KEYS = ("task", "model", "width_mult", "small_input", "in_chans", "dropout", "model_options",
              "val_fraction")
# Settings of classification's augmentation and loss; detection and segmentation augment with
# `coco_voc`'s fixed box- and mask-aware transforms, so other values there are refused.
CLASSIFICATION_ONLY = ("small_input", "label_smoothing", "hflip", "scale", "crop_padding", "erasing",
                       "auto_augment", "eval_flip")
DEFAULTS = {
    "task": None, "model": "mobilenet_v2", "width_mult": None, "small_input": False, "in_chans": None,
    "dropout": None, "model_options": {}, "backbone": None, "pretrained": None, "resolution": None, "data": "fashion-mnist",
    "data_dir": None,
    "val_fraction": None, "workers": 0, "seed": 0, "epochs": 20, "batch_size": 128,
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "rmsprop_decay": 0.9,
    "eps": 1e-8, "weight_decay": 4e-5, "wd_norm_bias": False, "weight_decay_on": "all",
    "schedule": "cosine",
    "warmup_epochs": 0.0, "min_lr": 0.0, "lr_decay": 0.98, "label_smoothing": 0.0,
    "ema_decay": 0.0, "hflip": 0.5, "scale": [0.08, 1.0], "crop_padding": 0, "erasing": 0.0,
    "auto_augment": None, "eval_flip": False, "amp": "none", "channels_last": True, "compile": False,
    "sync_bn": False, "clip_grad": 0.0, "log_every": 0, "save_every_steps": 0, "strict": False,
    "deterministic": True, "device": None, "limit_train": 0, "limit_val": 0,
    "limit_test": 0,
}


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str) -> dict:
    """A recipe by name (mobilenets/recipes/NAME.json) or from a JSON file a user edited."""
    path = Path(name_or_path)
    if not path.suffix == ".json" or not path.is_file():
        if name_or_path not in list_recipes():
            raise MobileNetsError(f"--recipe {name_or_path}: neither a recipe name "
                                  f"({', '.join(list_recipes())}) nor a JSON file")
        path = RECIPES_DIR / f"{name_or_path}.json"
    try:
        recipe = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MobileNetsError(f"{path}: not a readable JSON recipe ({e})") from None
    if not isinstance(recipe, dict):
        raise MobileNetsError(f"{path}: a recipe must be a JSON object of settings")
    unknown = sorted(k for k in recipe if k not in DEFAULTS and not k.startswith("_"))
    if unknown:
        raise MobileNetsError(f"{path}: unknown recipe key {unknown[0]!r}; allowed: {', '.join(DEFAULTS)}")
    return {k: v for k, v in recipe.items() if not k.startswith("_")}


def parse_set(items: list[str]) -> dict:
    """`--set key=value` overrides; values are read as JSON when they parse, else as strings."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in DEFAULTS:
            raise MobileNetsError(f"--set {item}: expected KEY=VALUE with KEY one of {', '.join(DEFAULTS)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def validate(cfg: dict) -> dict:
    """One-line errors for values no run could use."""
    def need(key, ok, allowed):
        if not ok:
            raise MobileNetsError(f"{key}={cfg[key]!r} is invalid; allowed: {allowed}")

    def number(key):
        v = cfg[key]
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(key):
        return isinstance(cfg[key], int) and not isinstance(cfg[key], bool)

    need("epochs", integer("epochs") and cfg["epochs"] >= 1, "integer >= 1")
    need("batch_size", integer("batch_size") and cfg["batch_size"] >= 1, "integer >= 1")
    need("lr", number("lr") and cfg["lr"] > 0, "number > 0")
    for key in ("weight_decay", "min_lr", "label_smoothing", "warmup_epochs", "clip_grad", "momentum"):
        need(key, number(key) and cfg[key] >= 0, "number >= 0")
    need("label_smoothing", cfg["label_smoothing"] < 1, "0 <= label_smoothing < 1")
    need("ema_decay", number("ema_decay") and 0 <= cfg["ema_decay"] < 1, "0 <= ema_decay < 1")
    need("lr_decay", number("lr_decay") and 0 < cfg["lr_decay"] <= 1, "0 < lr_decay <= 1")
    need("optimizer", cfg["optimizer"] in ("sgd", "rmsprop", "adamw"), "sgd, rmsprop, adamw")
    need("weight_decay_on", cfg["weight_decay_on"] in WEIGHT_DECAY_ON,
         "all (every tensor but BN and biases, which wd_norm_bias adds) or conv (conv and linear "
         "weights but depthwise filters, as the reference trainer)")
    need("wd_norm_bias", not (cfg["wd_norm_bias"] and cfg["weight_decay_on"] == "conv"),
         "false with weight_decay_on=conv, which never decays BN or biases")
    need("schedule", cfg["schedule"] in ("cosine", "onecycle", "exponential", "constant"),
         "cosine, onecycle, exponential, constant")
    need("amp", cfg["amp"] in ("none", "bf16", "fp16"), "none, bf16, fp16")
    need("seed", integer("seed") and cfg["seed"] >= 0, "integer >= 0")
    cpus = os.cpu_count() or 1
    need("workers", integer("workers") and 0 <= cfg["workers"] <= WORKERS_PER_CPU * cpus,
         f"integer 0..{WORKERS_PER_CPU * cpus} ({WORKERS_PER_CPU} per CPU core, {cpus} here)")
    for key in ("log_every", "save_every_steps", "crop_padding", "limit_train", "limit_val", "limit_test"):
        need(key, integer(key) and cfg[key] >= 0, "integer >= 0")
    need("eval_flip", isinstance(cfg["eval_flip"], bool), "true or false")
    need("backbone", cfg["backbone"] is None or isinstance(cfg["backbone"], str),
         "a weights file whose stem/blocks/last_conv start the model")
    need("pretrained", cfg["pretrained"] is None or cfg["pretrained"] is True
         or isinstance(cfg["pretrained"], str),
         "true (the model's default published weights) or a tag, e.g. IMAGENET1K_V1")
    opts = cfg["model_options"]
    need("model_options", isinstance(opts, dict) and all(isinstance(k, str) for k in opts),
         'a JSON object of create_model options, e.g. {"proj_act": "relu6"}')
    # The named keys have one place to be set, so a run's config cannot say two things.
    named = sorted(set(opts) & {"width_mult", "small_input", "in_chans", "dropout", "num_classes"})
    need("model_options", not named, f"options other than {', '.join(named)} (set those by their own key)")
    if cfg["width_mult"] is not None:
        need("width_mult", number("width_mult"), "a number, 0 < width_mult <= 8")
        check_width_mult(cfg["width_mult"])   # create_model's own bounds, checked before any data loads
    if cfg["resolution"] is not None:
        need("resolution", integer("resolution") and 8 <= cfg["resolution"] <= MAX_RESOLUTION,
             f"integer 8..{MAX_RESOLUTION}")
    need("scale", _area_range(cfg["scale"]), "[low, high] area fractions with 0 < low <= high <= 1")
    Augment.from_config(cfg)
    check_val_fraction(cfg["val_fraction"])
    cfg["task"] = resolve_task(cfg.get("task"), cfg["model"])
    if cfg["task"] != "classification":
        for key in CLASSIFICATION_ONLY:
            if cfg[key] != DEFAULTS[key]:
                raise MobileNetsError(f"{key}={cfg[key]!r} applies to classification only; {cfg['task']} "
                                      f"augments with coco_voc.{cfg['task']}_transforms")
        need("in_chans", cfg["in_chans"] in (None, 3), f"3 ({cfg['task']} reads RGB images)")
        if cfg["val_fraction"] is None:
            cfg["val_fraction"] = DENSE_VAL_FRACTION
    return cfg


def resumed_config(saved: dict) -> dict:
    """The config a checkpoint's `saved` one resumes with: DEFAULTS for the keys added since.
    Runs saved before the test set was kept apart (classification runs without limit_test,
    detection and segmentation runs without val_fraction) scored every epoch on the split that is
    now scored once at the end, and trained on all the training images; they go on training on
    those, as val_fraction=0 runs that keep their final epoch."""
    cfg = {**DEFAULTS, **saved}
    if saved.get("task") not in (None, "classification") and (saved.get("val_fraction") is None
                                                                or "limit_test" not in saved):
        # Detection and segmentation runs from before their val split was held out of the
        # training images (`validate` now always sets it) chose their epoch on the annotations'
        # val split: they go on with all their training images and keep the final epoch.
        cfg["val_fraction"] = 0
    elif "limit_test" not in saved and val_held_out_beside_test(str(saved.get("data"))):
        cfg["val_fraction"] = 0
    return cfg


def _area_range(scale) -> bool:
    """Whether `scale` is RandomResizedCrop's [low, high] share of the image area."""
    return (isinstance(scale, (list, tuple)) and len(scale) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scale)
            and 0 < scale[0] <= scale[1] <= 1)


def resolve_task(task: str | None, model: str) -> str:
    """The task of `model` (None: whatever it does); one line when the two disagree."""
    if task is not None and task not in TRAIN_TASKS:
        raise MobileNetsError(f"task={task!r} is invalid; allowed: {', '.join(TRAIN_TASKS)}")
    own = model_task(model)
    if task is not None and task != own:
        fitting = [m for m in list_models() if model_task(m) == task]
        shown = ", ".join(fitting[:4]) + (", …" if len(fitting) > 4 else "")
        raise MobileNetsError(f"--model {model} is a {own} model, not a {task} one; {task} models: {shown}")
    return own


def default_recipe(task: str | None, model: str | None, data: str | None) -> str:
    """detection / segmentation for those tasks (named, or implied by the model); for
    classification fashion-mnist on Fashion-MNIST, modern otherwise."""
    task = task or (model_task(model) if model else "classification")
    if task != "classification":
        return task
    return "fashion-mnist" if (data or "fashion-mnist").lower() in ("fashion-mnist", "fashion_mnist",
                                                                      "fmnist") else "modern"
