"""`mobilenets train`: recipes, the training loop, checkpoints that resume exactly, run reports.

One loop trains every task (`tasks.py`: classification, detection, segmentation); the task
supplies data, loss and evaluation. A run directory holds best.safetensors (best value of the
task's metric: top-1, AP50, mIoU), last.pt (the whole training state: tensors and primitives
only, so `torch.load(weights_only=True)` reads it), metrics.jsonl (one object per epoch),
training_curve.png and, at the end, report.json. While a run trains, train.lock names it and
keeps a second training out of the directory.

SIGINT (Ctrl-C) and SIGTERM (`timeout`, docker, Slurm, systemd) stop a run at the next step
boundary with a checkpoint from which it resumes exactly; a second signal stops it at once.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import distributed
from ..core.errors import MobileNetsError
from ..core.io import atomic_write_text, remove_stale_temps
from ..models.mobilenet import create_model
from ..models.profile import profile
from ..models.weights import load_backbone
from .checkpoint import (CHECKPOINT_FORMAT, append_jsonl, kept_checkpoint, plain_state, read_checkpoint,
                         rng_state, run_lock, save_checkpoint, set_rng_state, truncate_metrics)
from .interrupts import StopAtBoundary, StopSignals
from .optim import build_optimizer, ema_update, lr_factor, optimizer_step
from .plots import plot_curves
from .recipes import MODEL_KEYS, resumed_config, validate
from .tasks import open_task


class TrainingStopped(Exception):
    """Training cannot go on (e.g. the loss became NaN, the disk is full); the message says why
    and what was kept."""


@dataclass
class Position:
    """How far a run is: with the model and optimizer, what a step-boundary checkpoint holds."""
    epoch: int = 0                 # epochs done
    step_in_epoch: int = 0
    global_step: int = 0
    best: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0     # in the processes before this one
    partial: dict = field(default_factory=lambda: {"loss_sum": 0.0, "seen": 0})  # the epoch's sums so far


def train(cfg: dict, out: str | Path, resume: str | None = None, progress: bool = True) -> dict:
    """Train as `cfg` says, writing the run directory `out`; returns the report, or
    {"interrupted": True, "signal": "SIGINT" | "SIGTERM", "epoch", "step_in_epoch"} when a signal
    stopped it with a checkpoint to resume from. SIGINT and SIGTERM are handled while it runs."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MobileNetsError(f"out={out} is a file; a run directory (new or existing folder) is needed")
    settings, ckpt, stamp = _resolve(cfg, out, resume)
    ctx = distributed.setup(settings.get("device"))
    try:
        with StopSignals() as signals, (run_lock(out) if ctx.main else contextlib.nullcontext()):
            if ctx.main and _stamp(out, resume) != stamp:  # written by another run before we held the lock
                settings, ckpt, stamp = _resolve(cfg, out, resume)
            run = Run(settings, out, ctx, progress, signals)
            run.setup(ckpt)
            return run.loop()
    finally:
        distributed.teardown(ctx)


def _resolve(cfg: dict, out: Path, resume: str | None) -> tuple[dict, dict | None, tuple]:
    """The validated settings, the checkpoint to resume (or None) and the stamp of the files read."""
    stamp = _stamp(out, resume)
    ckpt = None
    if resume:
        _, ckpt = read_checkpoint(resume)
        saved = ckpt["config"]
        for key in MODEL_KEYS:
            if key in cfg.get("_explicit", ()) and cfg[key] != saved.get(key):
                raise MobileNetsError(
                    f"--resume {resume}: the checkpoint trains {saved['model']} with {key}={saved.get(key)!r}, "
                    f"not {cfg[key]!r}; start a new run in another --out instead")
        # A checkpoint from before a key existed resumes with its default (`resumed_config`).
        cfg = {**resumed_config(saved), **{k: cfg[k] for k in cfg.get("_explicit", ()) if k not in MODEL_KEYS}}
    elif (out / "last.pt").exists():
        raise MobileNetsError(f"--out {out}: already holds a run (last.pt); continue it with --resume {out} "
                              "or choose another --out")
    return validate({k: v for k, v in cfg.items() if k != "_explicit"}), ckpt, stamp


def _stamp(out: Path, resume: str | None) -> tuple:
    """Identity and version of the checkpoints a start reads, to notice a write by another run."""
    paths = [out / "last.pt"]
    if resume:
        paths.append(Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume))
    stats = []
    for p in paths:
        try:
            s = p.stat()
            stats.append((s.st_ino, s.st_mtime_ns, s.st_size))
        except OSError:
            stats.append(None)
    return tuple(stats)


class Run:
    """One training run: settings, model, optimizer, data and position. setup() builds or
    restores them, loop() trains epoch by epoch; a checkpoint always holds a step boundary."""

    def __init__(self, cfg: dict, out: Path, ctx: distributed.Context, progress: bool, signals: StopSignals):
        self.cfg, self.out, self.ctx, self.progress, self.signals = cfg, out, ctx, progress, signals
        self.pos = Position()
        self.torn = False          # inside a step's updates: the state is no step boundary
        self.last_val, self.bar, self.tb = None, None, None
        self.metrics_path = out / "metrics.jsonl"
        self.t_start = self.t_epoch = time.perf_counter()
        self.seen_at_epoch_start = 0

    # -- set-up ----------------------------------------------------------------------------

    def setup(self, ckpt: dict | None) -> None:
        torch.manual_seed(self.cfg["seed"])
        if self.cfg["deterministic"]:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.task = open_task(self.cfg)
        self._build_model(fresh=ckpt is None)
        self._place_model()
        self._build_optimizer()
        if ckpt is not None:
            self._restore(ckpt)
        self.preprocessing = self.task.preprocessing()
        self.total_steps = self.cfg["epochs"] * self.steps_per_epoch
        if self.ctx.main:
            self._prepare_out(resuming=ckpt is not None)

    def _build_model(self, fresh: bool) -> None:
        cfg, task = self.cfg, self.task
        # Architecture options (e.g. proj_act) go into the model's kwargs, so the weights files
        # name a base model plus options and load in any process, not a process-local variant.
        self.kwargs = {**cfg["model_options"], **task.model_kwargs(cfg)}
        # Published weights start a fresh run only; a resumed one loads its own checkpoint.
        model = create_model(cfg["model"], pretrained=cfg["pretrained"] if fresh else None, **self.kwargs)
        if cfg["backbone"] and fresh:
            got = load_backbone(model, cfg["backbone"])
            if self.ctx.main:
                shapes = (f"; input channels adapted: {', '.join(got['adapted'])}" if got["adapted"] else "") + (
                    f"; other shapes: {', '.join(got['skipped'][:3])}" if got["skipped"] else "")
                print(f"backbone: {got['loaded']} of the model's {got['backbone_tensors']} backbone tensors "
                      f"from {cfg['backbone']}{shapes}", file=sys.stderr)
        widths = {b.out_ch for b in getattr(getattr(model, "arch", None), "blocks", ())}
        if self.ctx.main and cfg["width_mult"] is not None and len(widths) == 1:
            warnings.warn(f"width_mult={cfg['width_mult']} gives every block the minimum {widths.pop()} channels; "
                          "any smaller width_mult builds this same model", stacklevel=2)
        task.adapt(model)
        self.prof = profile(model, task.resolution)
        self.raw = model

    def _place_model(self) -> None:
        cfg, ctx, dev = self.cfg, self.ctx, self.ctx.device
        self.memory_format = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
        raw = self.raw
        if cfg["sync_bn"] and ctx.distributed:
            raw = distributed.convert_sync_batchnorm(raw, dev)
        self.raw = raw = raw.to(dev, memory_format=self.memory_format)
        self.ema = None
        if cfg["ema_decay"] > 0:
            self.ema = AveragedModel(raw, multi_avg_fn=ema_update(cfg["ema_decay"]), use_buffers=True)
        model = raw
        if ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg["compile"]:
            model = torch.compile(model)
        self.model = model

    def _build_optimizer(self) -> None:
        cfg, bs, dev = self.cfg, self.cfg["batch_size"], self.ctx.device
        self.steps_per_epoch = self.task.train.num_steps(bs, self.ctx.world)
        if self.steps_per_epoch < 1:
            raise MobileNetsError(f"batch_size={bs} x {self.ctx.world} process(es) is larger than the "
                                  f"{len(self.task.train)} training images")
        self.optimizer = build_optimizer(self.raw, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["amp"])
        if self.amp_dtype is torch.float16 and dev.type != "cuda":
            raise MobileNetsError("amp=fp16 needs a CUDA device; on CPU use amp=bf16")
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype is torch.float16)

    def _restore(self, ckpt: dict) -> None:
        self.raw.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        # Checkpoints before the trainer ran other tasks called the best value best_top1.
        best = ckpt["best_metric"] if "best_metric" in ckpt else ckpt["best_top1"]
        self.pos = Position(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], best,
                            ckpt["best_epoch"], ckpt["train_seconds"], dict(ckpt["partial"]))
        set_rng_state(ckpt["rng"], self.ctx.device)

    def _prepare_out(self, resuming: bool) -> None:
        out = self.out
        with self._writing(out):
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out)  # left by a killed write; the lock keeps other writers out
            if resuming:
                truncate_metrics(self.metrics_path, self.pos.epoch)
            elif self.metrics_path.exists():
                self.metrics_path.unlink()
            atomic_write_text(out / "config.json", json.dumps(self.cfg, indent=2) + "\n")
        if self.task.skipped:
            print(f"skipped {len(self.task.skipped)} unreadable image file(s) (listed in report.json)",
                  file=sys.stderr)
        self.tb = _tensorboard(out)

    # -- state -----------------------------------------------------------------------------

    def state(self) -> dict:
        cfg, pos = self.cfg, self.pos
        return {"format": CHECKPOINT_FORMAT, "model": cfg["model"], "model_kwargs": dict(self.kwargs),
                "config": cfg, "classes": self.task.classes, "preprocessing": self.preprocessing,
                "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch, "global_step": pos.global_step,
                "state_dict": plain_state(self.raw), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "rng": rng_state(self.ctx.device), "best_metric": pos.best, "best_epoch": pos.best_epoch,
                "train_seconds": pos.train_seconds + (time.perf_counter() - self.t_start),
                "partial": dict(pos.partial), "skipped": self.task.skipped}

    def checkpoint(self) -> None:
        """last.pt := the state now, which the callers make sure is a step boundary."""
        if self.ctx.main:
            path = self.out / "last.pt"
            with self._writing(path):
                save_checkpoint(path, self.state())

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """A write into the run directory that fails (a full disk) ends the run with one line."""
        try:
            yield
        except OSError as e:
            kept = kept_checkpoint(self.out)
            raise TrainingStopped(
                f"cannot write {path} ({e.strerror or e}); training stopped; "
                + (f"the last good checkpoint is kept: {kept}; free space, then resume from {self.out}"
                   if kept else "no checkpoint was written yet")) from e

    def evaluate(self) -> dict:
        return self.task.evaluate_split(self.ema.module if self.ema is not None else self.raw,
                                        self.cfg["batch_size"], self.ctx, self.memory_format, self.amp_dtype)

    # -- the loop --------------------------------------------------------------------------

    def loop(self) -> dict:
        self.t_start = time.perf_counter()
        self.signals.mode = "defer"
        try:
            while self.pos.epoch < self.cfg["epochs"]:
                self.train_epoch()
                self.end_epoch()
                if self.pos.epoch < self.cfg["epochs"] and self._stop_requested():
                    raise StopAtBoundary
        except (KeyboardInterrupt, StopAtBoundary) as e:
            return self.interrupted(getattr(e, "signum", None))
        finally:
            self.signals.mode = "ignore"
        return self.report()

    def train_epoch(self) -> None:
        cfg, pos, ctx = self.cfg, self.pos, self.ctx
        self.model.train()
        self.t_epoch = time.perf_counter()
        self.seen_at_epoch_start = pos.partial["seen"]
        self.bar = tqdm(total=self.steps_per_epoch, initial=pos.step_in_epoch,
                        desc=f"epoch {pos.epoch + 1}/{cfg['epochs']}", disable=not (self.progress and ctx.main),
                        leave=False, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                        file=sys.stderr)
        for batch in self.task.train.batches(cfg["batch_size"], cfg["seed"], pos.epoch, ctx.rank, ctx.world,
                                             start_step=pos.step_in_epoch):
            step_loss, stop = self.step(batch)
            self._after_step(step_loss)
            if stop:
                raise StopAtBoundary
        self.bar.close()

    def step(self, batch) -> tuple[float, bool]:
        """One optimizer step; returns its loss and whether a stop signal reached any rank."""
        dev, pos = self.ctx.device, self.pos
        batch = self.task.to_device(batch, dev, self.memory_format)
        n = len(batch[0])
        self.torn = True
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss, sums = self.task.train_loss(self.model, batch)
        optimizer_step(self.model, loss, self.optimizer, self.scaler, self.cfg["clip_grad"])
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.raw)
        # The stop flag travels with the step's sums, so every rank stops after the same step.
        stats = torch.stack([loss.detach().float() * n, torch.tensor(float(n), device=dev),
                             *(torch.as_tensor(v, device=dev).float() for v in sums.values()),
                             torch.tensor(float(self.signals.received is not None), device=dev)])
        distributed.all_reduce_sum(stats, self.ctx)
        values = stats.tolist()
        step_loss = values[0] / values[1]
        if not math.isfinite(step_loss):
            kept = kept_checkpoint(self.out) or "none written yet"
            raise TrainingStopped(f"loss became {step_loss} at epoch {pos.epoch + 1} step {pos.step_in_epoch + 1}; "
                                  f"training stopped; last good checkpoint: {kept}; lower --lr "
                                  "or add warm-up / clip_grad")
        pos.partial["loss_sum"] += values[0]
        pos.partial["seen"] += int(values[1])
        for k, v in zip(sums, values[2:-1]):
            pos.partial[k] = pos.partial.get(k, 0) + v
        pos.step_in_epoch += 1
        pos.global_step += 1
        self.torn = False
        return step_loss, values[-1] > 0

    def _after_step(self, step_loss: float) -> None:
        cfg, pos, ctx = self.cfg, self.pos, self.ctx
        if ctx.main and cfg["log_every"] and pos.global_step % cfg["log_every"] == 0:
            with self._writing(self.out / "steps.jsonl"):
                append_jsonl(self.out / "steps.jsonl", {"step": pos.global_step, "epoch": pos.epoch + 1,
                                                        "loss": step_loss,
                                                        "lr": self.optimizer.param_groups[0]["lr"]})
        if cfg["save_every_steps"] and pos.global_step % cfg["save_every_steps"] == 0:
            self.checkpoint()
        rate = (pos.partial["seen"] - self.seen_at_epoch_start) / max(time.perf_counter() - self.t_epoch, 1e-9)
        run_left = (self.total_steps - pos.global_step) * cfg["batch_size"] * ctx.world / max(rate, 1e-9)
        self.bar.set_postfix_str(f"loss {step_loss:.3f} {rate:.0f} img/s run ETA {run_left / 60:.0f} min",
                                 refresh=False)
        self.bar.update(1)

    def end_epoch(self) -> None:
        """Evaluate, write the epoch's record and best weights, then checkpoint the epoch's end."""
        cfg, pos, task, main = self.cfg, self.pos, self.task, self.ctx.main
        epoch_seconds = time.perf_counter() - self.t_epoch
        val = self.evaluate()
        epoch, seen = pos.epoch + 1, pos.partial["seen"]
        sums = {k: v for k, v in pos.partial.items() if k not in ("loss_sum", "seen")}
        record = {"epoch": epoch, "train_loss": pos.partial["loss_sum"] / max(seen, 1),
                  **task.train_record(sums, seen), **task.record(val),
                  "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": round(epoch_seconds, 2),
                  "img_per_s": round((seen - self.seen_at_epoch_start) / max(epoch_seconds, 1e-9), 1)}
        better = val["metric"] > pos.best
        if main and better:
            with self._writing(self.out / "best.safetensors"):
                task.save_best(self.out / "best.safetensors", self.ema.module if self.ema is not None else self.raw,
                               val, epoch, f"mobilenets train, recipe {cfg['recipe']}, data {task.data_name}")
        if main:
            with self._writing(self.metrics_path):
                append_jsonl(self.metrics_path, record)
        # The files first, then the position in one assignment: a stop before it checkpoints the
        # end of the steps, which a resume evaluates again (truncate_metrics drops the record).
        self.pos = Position(epoch, 0, pos.global_step, val["metric"] if better else pos.best,
                            epoch if better else pos.best_epoch, pos.train_seconds)
        self.last_val = val
        self.checkpoint()
        if main:
            with self._writing(self.out / "training_curve.png"):
                plot_curves(self.metrics_path, self.out / "training_curve.png", task.plot_keys)
            if self.tb is not None:
                for k, v in record.items():
                    if k != "epoch":
                        self.tb.add_scalar(k, v, epoch)
            if self.progress:
                print(f"epoch {epoch}/{cfg['epochs']}  {task.describe(record)}  "
                      f"{record['img_per_s']:.0f} img/s  {epoch_seconds:.0f} s", file=sys.stderr, flush=True)

    def _stop_requested(self) -> bool:
        """Whether a stop signal reached any rank (one collective, at an epoch's end)."""
        flag = torch.tensor([float(self.signals.received is not None)], device=self.ctx.device)
        return distributed.all_reduce_sum(flag, self.ctx).item() > 0

    # -- the end ---------------------------------------------------------------------------

    def interrupted(self, signum: int | None) -> dict:
        """Stop on a signal: checkpoint the last complete step and say how to go on."""
        self.signals.mode = "ignore"
        name = signal.Signals(self.signals.received or signum or signal.SIGINT).name
        pos, out = self.pos, self.out
        if self.bar is not None:
            self.bar.close()
        how = "interrupted" if name == "SIGINT" else f"stopped by {name}"
        if self.torn:  # a second signal inside a step: its updates are half done, so not saved
            kept = kept_checkpoint(out)
            line = (f"{how} inside step {pos.step_in_epoch + 1} of epoch {pos.epoch + 1}; that step is not "
                    + (f"saved; the last checkpoint is {kept}; continue with --resume {out}" if kept
                       else "saved and no checkpoint was written yet"))
        else:
            self.checkpoint()
            line = (f"{how} at epoch {pos.epoch + 1} step {pos.step_in_epoch}; checkpoint written to "
                    f"{out / 'last.pt'}; continue with --resume {out}")
        if self.ctx.main:
            print(line, file=sys.stderr)
            if self.tb is not None:
                self.tb.close()
        return {"interrupted": True, "signal": name, "epoch": pos.epoch, "step_in_epoch": pos.step_in_epoch}

    def report(self) -> dict:
        cfg, pos, task = self.cfg, self.pos, self.task
        train_seconds = pos.train_seconds + time.perf_counter() - self.t_start
        if self.last_val is None:  # resumed a finished run: evaluate what it holds
            self.last_val = self.evaluate()
        report = {"model": cfg["model"], "model_kwargs": self.kwargs, "task": task.name, "recipe": cfg["recipe"],
                  "data": task.data_name, "resolution": task.resolution, "epochs": cfg["epochs"],
                  "batch_size": cfg["batch_size"], "world_size": self.ctx.world, **task.report(self.last_val),
                  "metric": task.metric, f"best_{task.metric}": pos.best, "best_epoch": pos.best_epoch,
                  "train_seconds": round(train_seconds, 1), "params": self.prof["params"],
                  "madds": self.prof["madds"], "skipped_files": len(task.skipped), "skipped": task.skipped,
                  "classes": task.classes}
        report.update(task.finish(self.out, self.ema.module if self.ema is not None else self.raw,
                                  cfg["batch_size"], self.ctx, self.memory_format, report))
        if self.ctx.main:
            with self._writing(self.out / "report.json"):
                atomic_write_text(self.out / "report.json", json.dumps(report, indent=2) + "\n")
            if self.tb is not None:
                self.tb.close()
        return report


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))
