"""`mobilenets train`: recipes, the training loop, checkpoints that resume exactly, run reports.

One loop trains every task (`tasks.py`: classification, detection, segmentation); the task
supplies data, loss and evaluation. A run directory holds best.safetensors (best value of the
task's metric: top-1, AP50, mIoU), last.pt (the whole training state: tensors and primitives
only, so `torch.load(weights_only=True)` reads it), metrics.jsonl (one object per epoch),
training_curve.png and, at the end, report.json.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .data import Augment
from .errors import MobileNetsError
from .io import atomic_path, atomic_write_text
from .tasks import TRAIN_TASKS, open_task, record_keys

RECIPES_DIR = Path(__file__).parent / "recipes"
CHECKPOINT_FORMAT = "mobilenets-train/1"
# Recipe keys that describe the model: a resumed run must agree on them.
MODEL_KEYS = ("task", "model", "width_mult", "small_input", "in_chans", "dropout", "model_options")
# Settings of classification's augmentation and loss; detection and segmentation augment with
# `coco_voc`'s fixed box- and mask-aware transforms, so other values there are refused.
CLASSIFICATION_ONLY = ("small_input", "label_smoothing", "hflip", "scale", "crop_padding", "erasing",
                       "auto_augment", "eval_flip")
DEFAULTS = {
    "task": None, "model": "mobilenet_v2", "width_mult": None, "small_input": False, "in_chans": None,
    "dropout": None, "model_options": {}, "backbone": None, "resolution": None, "data": "fashion-mnist",
    "data_dir": None,
    "val_fraction": 0.1, "workers": 0, "seed": 0, "epochs": 20, "batch_size": 128,
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "rmsprop_decay": 0.9,
    "eps": 1e-8, "weight_decay": 4e-5, "wd_norm_bias": False, "schedule": "cosine",
    "warmup_epochs": 0.0, "min_lr": 0.0, "lr_decay": 0.98, "label_smoothing": 0.0,
    "ema_decay": 0.0, "hflip": 0.5, "scale": [0.08, 1.0], "crop_padding": 0, "erasing": 0.0,
    "auto_augment": None, "eval_flip": False, "amp": "none", "channels_last": True, "compile": False,
    "sync_bn": False, "clip_grad": 0.0, "log_every": 0, "save_every_steps": 0, "strict": False,
    "deterministic": True, "device": None, "limit_train": 0, "limit_val": 0,
}


class TrainingStopped(Exception):
    """Training cannot go on (e.g. the loss became NaN); the message says why and what was kept."""


# ---------------------------------------------------------------------------------------------
# Recipes


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
    need("schedule", cfg["schedule"] in ("cosine", "onecycle", "exponential", "constant"),
         "cosine, onecycle, exponential, constant")
    need("amp", cfg["amp"] in ("none", "bf16", "fp16"), "none, bf16, fp16")
    need("seed", integer("seed") and cfg["seed"] >= 0, "integer >= 0")
    need("workers", integer("workers") and cfg["workers"] >= 0, "integer >= 0")
    for key in ("log_every", "save_every_steps", "crop_padding", "limit_train", "limit_val"):
        need(key, integer(key) and cfg[key] >= 0, "integer >= 0")
    need("eval_flip", isinstance(cfg["eval_flip"], bool), "true or false")
    need("backbone", cfg["backbone"] is None or isinstance(cfg["backbone"], str),
         "a weights file whose stem/blocks/last_conv start the model")
    opts = cfg["model_options"]
    need("model_options", isinstance(opts, dict) and all(isinstance(k, str) for k in opts),
         'a JSON object of create_model options, e.g. {"proj_act": "relu6"}')
    # The named keys have one place to be set, so a run's config cannot say two things.
    named = sorted(set(opts) & {"width_mult", "small_input", "in_chans", "dropout", "num_classes"})
    need("model_options", not named, f"options other than {', '.join(named)} (set those by their own key)")
    if cfg["width_mult"] is not None:
        need("width_mult", number("width_mult") and cfg["width_mult"] > 0, "number > 0")
    if cfg["resolution"] is not None:
        need("resolution", integer("resolution") and cfg["resolution"] >= 8, "integer >= 8")
    Augment.from_config(cfg)
    cfg["task"] = resolve_task(cfg.get("task"), cfg["model"])
    if cfg["task"] != "classification":
        for key in CLASSIFICATION_ONLY:
            if cfg[key] != DEFAULTS[key]:
                raise MobileNetsError(f"{key}={cfg[key]!r} applies to classification only; {cfg['task']} "
                                      f"augments with coco_voc.{cfg['task']}_transforms")
        need("in_chans", cfg["in_chans"] in (None, 3), f"3 ({cfg['task']} reads RGB images)")
    return cfg


def resolve_task(task: str | None, model: str) -> str:
    """The task of `model` (None: whatever it does); one line when the two disagree."""
    from .models import list_models, model_task
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
    from .models import model_task
    task = task or (model_task(model) if model else "classification")
    if task != "classification":
        return task
    return "fashion-mnist" if (data or "fashion-mnist").lower() in ("fashion-mnist", "fashion_mnist",
                                                                      "fmnist") else "modern"


def resolve_config(args: argparse.Namespace, explicit: dict) -> dict:
    """defaults < recipe < --set < named flags."""
    recipe_name = args.recipe or default_recipe(explicit.get("task"), explicit.get("model"), args.data)
    cfg = {**DEFAULTS, **load_recipe(recipe_name), **parse_set(args.set), **explicit}
    cfg["recipe"] = recipe_name
    return cfg


# ---------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # BN scales/shifts and biases are not regularised in the modern recipes (1-D tensors).
        (no_decay if p.ndim <= 1 and not cfg["wd_norm_bias"] else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"],
                               nesterov=bool(cfg["nesterov"] and cfg["momentum"] > 0))
    if cfg["optimizer"] == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg["lr"], alpha=cfg["rmsprop_decay"], eps=cfg["eps"],
                                   momentum=cfg["momentum"])
    return torch.optim.AdamW(groups, lr=cfg["lr"], eps=cfg["eps"])


def lr_factor(cfg: dict, steps_per_epoch: int):
    """Multiplier of the base lr at optimizer step `step` (per-step warm-up and decay)."""
    total = cfg["epochs"] * steps_per_epoch
    warm = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    floor = cfg["min_lr"] / cfg["lr"]

    def factor(step: int) -> float:
        if cfg["schedule"] == "onecycle":
            # Linear ramp over the first 30 % (or the warm-up, if given), then cosine to the floor.
            up = warm or max(1, int(0.3 * total))
            if step < up:
                return 0.04 + 0.96 * step / up
            t = min(1.0, (step - up) / max(1, total - up))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if step < warm:
            return (step + 1) / warm
        if cfg["schedule"] == "cosine":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg["schedule"] == "exponential":
            return max(floor, cfg["lr_decay"] ** ((step - warm) // steps_per_epoch))
        return 1.0
    return factor


def ema_update(decay: float):
    """EMA whose decay ramps up as (1 + n) / (10 + n) until it reaches `decay`: with a fixed
    0.9998 a short run would evaluate and save weights that are still mostly the random init."""
    @torch.no_grad()
    def update(averaged: list, current: list, num_averaged) -> None:
        if not torch.is_floating_point(averaged[0]):  # counters such as num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return update


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer,
               scaler=None, amp_dtype=None, clip_grad: float = 0.0):
    """One classification step (forward, backward, optimizer); returns (logits, loss). The
    throughput benchmark times this for every contender; the trainer runs the same two parts
    with the task's loss."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(x)
        loss = criterion(logits.float(), y)
    optimizer_step(model, loss, optimizer, scaler, clip_grad)
    return logits, loss


def optimizer_step(model: nn.Module, loss: torch.Tensor, optimizer, scaler=None, clip_grad: float = 0.0) -> None:
    """Backward pass of `loss` and one optimizer step (through the fp16 grad scaler if enabled)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _buffer(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, state: dict) -> None:
    data = _buffer(state)  # serialise first so an error cannot leave a temp file half written
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_checkpoint(resume: str) -> tuple[Path, dict]:
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise MobileNetsError(f"--resume {resume}: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MobileNetsError(f"--resume {resume}: {path} is not a readable checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MobileNetsError(f"--resume {resume}: {path} is not a mobilenets training checkpoint")
    return path, state


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------
# Outputs


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the epochs the checkpoint contains (a crash can fall between the two writes)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def plot_curves(metrics_path: Path, png: Path, keys=("train_top1", "val_top1")) -> None:
    """Losses on the left, the metrics.jsonl entries `keys` on the right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if key in rows[0]:
            a.plot(ep, [r[key] for r in rows], "o-", label=key.removesuffix("_loss"))
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    for key in keys:
        b.plot(ep, [r[key] for r in rows], "o-", label=key.replace("_", " "))
    b.set_xlabel("epoch"), b.set_ylabel("score"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


# ---------------------------------------------------------------------------------------------
# The run


def train(cfg: dict, out: str | Path, resume: str | None = None, progress: bool = True) -> dict:
    """Train as `cfg` says, writing the run directory `out`; returns the report."""
    from .models import create_model
    from .profile import profile
    from .runtime import tune_allocator

    tune_allocator()
    out = Path(out)
    ckpt = None
    if resume:
        _, ckpt = read_checkpoint(resume)
        saved = ckpt["config"]
        for key in MODEL_KEYS:
            if key in cfg.get("_explicit", ()) and cfg[key] != saved.get(key):
                raise MobileNetsError(
                    f"--resume {resume}: the checkpoint trains {saved['model']} with {key}={saved.get(key)!r}, "
                    f"not {cfg[key]!r}; start a new run in another --out instead")
        # DEFAULTS first: a checkpoint from before a key existed resumes with its default.
        cfg = {**DEFAULTS, **saved, **{k: cfg[k] for k in cfg.get("_explicit", ()) if k not in MODEL_KEYS}}
    elif (out / "last.pt").exists():
        raise MobileNetsError(f"--out {out}: already holds a run (last.pt); continue it with --resume {out} "
                              "or choose another --out")
    cfg = validate({k: v for k, v in cfg.items() if k != "_explicit"})

    ctx = distributed.setup(cfg.get("device"))
    try:
        return _run(cfg, out, ckpt, ctx, progress, create_model, profile)
    finally:
        distributed.teardown(ctx)


def _run(cfg, out, ckpt, ctx, progress, create_model, profile) -> dict:
    seed = cfg["seed"]
    torch.manual_seed(seed)
    if cfg["deterministic"]:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    task = open_task(cfg)
    # Architecture options (e.g. proj_act) go into the model's kwargs, so the weights files
    # name a base model plus options and load in any process, not a process-local variant.
    kwargs = {**cfg["model_options"], **task.model_kwargs(cfg)}
    model = create_model(cfg["model"], **kwargs)
    if cfg["backbone"] and ckpt is None:
        from .weights import load_backbone
        got = load_backbone(model, cfg["backbone"])
        if ctx.main:
            shapes = f"; other shapes: {', '.join(got['skipped'][:3])}" if got["skipped"] else ""
            print(f"backbone: {got['loaded']} of the model's {got['backbone_tensors']} backbone tensors "
                  f"from {cfg['backbone']}{shapes}", file=sys.stderr)
    task.adapt(model)
    prof = profile(model, task.resolution)

    dev = ctx.device
    memory_format = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    if cfg["sync_bn"] and ctx.distributed:
        model = distributed.convert_sync_batchnorm(model, dev)
    model = model.to(dev, memory_format=memory_format)
    raw = model
    ema = None
    if cfg["ema_decay"] > 0:
        from torch.optim.swa_utils import AveragedModel
        ema = AveragedModel(raw, multi_avg_fn=ema_update(cfg["ema_decay"]), use_buffers=True)
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg["compile"]:
        model = torch.compile(model)

    bs = cfg["batch_size"]
    steps_per_epoch = task.train.num_steps(bs, ctx.world)
    if steps_per_epoch < 1:
        raise MobileNetsError(f"batch_size={bs} x {ctx.world} process(es) is larger than the "
                              f"{len(task.train)} training images")
    optimizer = build_optimizer(raw, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["amp"])
    if amp_dtype is torch.float16 and dev.type != "cuda":
        raise MobileNetsError("amp=fp16 needs a CUDA device; on CPU use amp=bf16")
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)

    epoch, step_in_epoch, global_step, best, best_epoch, train_seconds = 0, 0, 0, -1.0, 0, 0.0
    partial = {"loss_sum": 0.0, "seen": 0}   # sums over the epoch so far, and the task's own
    if ckpt is not None:
        raw.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        # Checkpoints before the trainer ran other tasks called the best value best_top1.
        best = ckpt["best_metric"] if "best_metric" in ckpt else ckpt["best_top1"]
        best_epoch, train_seconds = ckpt["best_epoch"], ckpt["train_seconds"]
        partial = dict(ckpt["partial"])
        _set_rng_state(ckpt["rng"], dev)

    preprocessing = task.preprocessing()
    metrics_path = out / "metrics.jsonl"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            _truncate_metrics(metrics_path, epoch)
        elif metrics_path.exists():
            metrics_path.unlink()
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=2) + "\n")
        if task.skipped:
            print(f"skipped {len(task.skipped)} unreadable image file(s) (listed in report.json)",
                  file=sys.stderr)
    tb = _tensorboard(out) if ctx.main else None

    def state(epoch_now: int, step_now: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model": cfg["model"], "model_kwargs": dict(kwargs),
                "config": cfg, "classes": task.classes, "preprocessing": preprocessing,
                "epoch": epoch_now, "step_in_epoch": step_now, "global_step": global_step,
                "state_dict": _plain_state(raw), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": _rng_state(dev), "best_metric": best, "best_epoch": best_epoch,
                "train_seconds": train_seconds + (time.perf_counter() - t_start),
                "partial": dict(partial), "skipped": task.skipped}

    def checkpoint(epoch_now: int, step_now: int) -> None:
        if ctx.main:
            save_checkpoint(out / "last.pt", state(epoch_now, step_now))

    def evaluate_now() -> dict:
        return task.evaluate_split(ema.module if ema is not None else raw, bs, ctx, memory_format, amp_dtype)

    total_steps = cfg["epochs"] * steps_per_epoch
    t_start = time.perf_counter()
    last_val = None
    bar = None
    from tqdm import tqdm
    try:
        while epoch < cfg["epochs"]:
            model.train()
            t_epoch = time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                       disable=not (progress and ctx.main), leave=False, dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
            seen_epoch_start = partial["seen"]
            for batch in task.train.batches(bs, seed, epoch, ctx.rank, ctx.world, start_step=step_in_epoch):
                batch = task.to_device(batch, dev, memory_format)
                n = len(batch[0])
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, sums = task.train_loss(model, batch)
                optimizer_step(model, loss, optimizer, scaler, cfg["clip_grad"])
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(raw)
                stats = torch.stack([loss.detach().float() * n, torch.tensor(float(n), device=dev),
                                     *(torch.as_tensor(v, device=dev).float() for v in sums.values())])
                distributed.all_reduce_sum(stats, ctx)
                step_loss = stats[0].item() / stats[1].item()
                if not math.isfinite(step_loss):
                    kept = (f"{out / 'last.pt'} (epoch {_checkpoint_epoch(out)})" if (out / "last.pt").exists()
                            else "none (no epoch finished)")
                    raise TrainingStopped(f"loss became {step_loss} at epoch {epoch + 1} step {step_in_epoch + 1}; "
                                          f"training stopped; last good checkpoint: {kept}; lower --lr "
                                          "or add warm-up / clip_grad")
                partial["loss_sum"] += stats[0].item()
                partial["seen"] += int(stats[1].item())
                for k, v in zip(sums, stats[2:].tolist()):
                    partial[k] = partial.get(k, 0) + v
                step_in_epoch += 1
                global_step += 1
                if ctx.main and cfg["log_every"] and global_step % cfg["log_every"] == 0:
                    _append_jsonl(out / "steps.jsonl", {"step": global_step, "epoch": epoch + 1,
                                                        "loss": step_loss,
                                                        "lr": optimizer.param_groups[0]["lr"]})
                if cfg["save_every_steps"] and global_step % cfg["save_every_steps"] == 0:
                    checkpoint(epoch, step_in_epoch)
                elapsed = time.perf_counter() - t_epoch
                rate = (partial["seen"] - seen_epoch_start) / max(elapsed, 1e-9)
                run_left = (total_steps - global_step) * bs * ctx.world / max(rate, 1e-9)
                bar.set_postfix_str(f"loss {step_loss:.3f} {rate:.0f} img/s run ETA {run_left / 60:.0f} min",
                                    refresh=False)
                bar.update(1)
            bar.close()
            epoch_seconds = time.perf_counter() - t_epoch
            val = evaluate_now()
            last_val = val
            epoch += 1
            seen = partial["seen"]
            sums = {k: v for k, v in partial.items() if k not in ("loss_sum", "seen")}
            record = {"epoch": epoch, "train_loss": partial["loss_sum"] / max(seen, 1),
                      **task.train_record(sums, seen), **task.record(val),
                      "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": round(epoch_seconds, 2),
                      "img_per_s": round((seen - seen_epoch_start) / max(epoch_seconds, 1e-9), 1)}
            partial = {"loss_sum": 0.0, "seen": 0}
            step_in_epoch = 0
            if val["metric"] > best:
                best, best_epoch = val["metric"], epoch
                if ctx.main:
                    task.save_best(out / "best.safetensors", ema.module if ema is not None else raw, val, epoch,
                                   f"mobilenets train, recipe {cfg['recipe']}, data {task.data_name}")
            if ctx.main:
                _append_jsonl(metrics_path, record)
                checkpoint(epoch, 0)
                plot_curves(metrics_path, out / "training_curve.png", task.plot_keys)
                if tb is not None:
                    for k, v in record.items():
                        if k != "epoch":
                            tb.add_scalar(k, v, epoch)
                if progress:
                    print(f"epoch {epoch}/{cfg['epochs']}  {task.describe(record)}  "
                          f"{record['img_per_s']:.0f} img/s  {epoch_seconds:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        checkpoint(epoch, step_in_epoch)
        if ctx.main:
            print(f"interrupted at epoch {epoch + 1} step {step_in_epoch}; checkpoint written to "
                  f"{out / 'last.pt'}; continue with --resume {out}", file=sys.stderr)
        return {"interrupted": True, "epoch": epoch, "step_in_epoch": step_in_epoch}
    train_seconds += time.perf_counter() - t_start
    if last_val is None:  # resumed a finished run: evaluate what it holds
        last_val = evaluate_now()
    report = {"model": cfg["model"], "model_kwargs": kwargs, "task": task.name, "recipe": cfg["recipe"],
              "data": task.data_name, "resolution": task.resolution, "epochs": cfg["epochs"],
              "batch_size": bs, "world_size": ctx.world, **task.report(last_val), "metric": task.metric,
              f"best_{task.metric}": best, "best_epoch": best_epoch, "train_seconds": round(train_seconds, 1),
              "params": prof["params"], "madds": prof["madds"], "skipped_files": len(task.skipped),
              "skipped": task.skipped, "classes": task.classes}
    if ctx.main:
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
        if tb is not None:
            tb.close()
    return report


def _checkpoint_epoch(out: Path) -> str:
    try:
        return str(torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # only used to word a message
        return "?"


def _plain_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# CLI

NAMED_FLAGS = {"task": "task", "model": "model", "width_mult": "width_mult", "small_input": "small_input",
               "data": "data", "data_dir": "data_dir", "epochs": "epochs",
               "batch_size": "batch_size", "lr": "lr", "seed": "seed", "workers": "workers",
               "strict": "strict", "amp": "amp", "compile": "compile", "sync_bn": "sync_bn",
               "save_every_steps": "save_every_steps", "device": "device", "in_chans": "in_chans",
               "backbone": "backbone"}


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
    p.add_argument("--data", default=None, help="'fashion-mnist' or an ImageFolder directory; a COCO "
                                                "folder for detection, a VOC folder for segmentation")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")
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
    from .data import plain_warnings
    plain_warnings()
    if not args.out and not args.resume:
        raise MobileNetsError("train needs --out DIR (or --resume DIR)")
    explicit = {key: getattr(args, attr) for key, attr in NAMED_FLAGS.items()
                if getattr(args, attr) is not None}
    if args.resume and not args.recipe:
        cfg = {**DEFAULTS, **explicit, "recipe": "resumed"}
    else:
        cfg = resolve_config(args, explicit)
    if "model" in explicit and "width_mult" not in explicit and not args.resume:
        from .models import model_defaults
        if "width_mult" in model_defaults(explicit["model"]):
            cfg["width_mult"] = None  # mobilenet_v2_100 means α = 1.0, whatever the recipe says
    cfg["_explicit"] = list(explicit)
    try:
        report = train(cfg, args.out or args.resume if not (args.resume and Path(args.resume).is_file())
                       else (args.out or Path(args.resume).parent), args.resume)
    except TrainingStopped as e:
        print(f"mobilenets: {e}", file=sys.stderr)
        return 1
    if report.get("interrupted"):
        return 130
    shown = ("model", "task", "epochs", *record_keys(report["task"]), "train_seconds", "params", "madds",
             "skipped_files")
    print(json.dumps({k: report[k] for k in shown}))
    return 0
