"""`mobilenets train`: recipes, the training loop, checkpoints that resume exactly, run reports.

One loop trains every task (`tasks.py`: classification, detection, segmentation); the task
supplies data, loss and evaluation. A run directory holds best.safetensors (best value of the
task's metric: top-1, AP50, mIoU), last.pt (the whole training state: tensors and primitives
only, so `torch.load(weights_only=True)` reads it), metrics.jsonl (one object per epoch),
training_curve.png and, at the end, report.json.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from . import distributed
from ..models.mobilenet import create_model
from ..models.profile import profile
from ..core.errors import MobileNetsError
from ..core.io import atomic_write_text
from .checkpoint import (CHECKPOINT_FORMAT, append_jsonl, checkpoint_epoch, plain_state, read_checkpoint,
                         rng_state, save_checkpoint, set_rng_state, truncate_metrics)
from .optim import build_optimizer, ema_update, lr_factor, optimizer_step
from .plots import plot_curves
from .recipes import MODEL_KEYS, resumed_config, validate
from .tasks import open_task
from ..models.weights import load_backbone

class TrainingStopped(Exception):
    """Training cannot go on (e.g. the loss became NaN); the message says why and what was kept."""


def train(cfg: dict, out: str | Path, resume: str | None = None, progress: bool = True) -> dict:
    """Train as `cfg` says, writing the run directory `out`; returns the report."""
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
        # A checkpoint from before a key existed resumes with its default (`resumed_config`).
        cfg = {**resumed_config(saved), **{k: cfg[k] for k in cfg.get("_explicit", ()) if k not in MODEL_KEYS}}
    elif (out / "last.pt").exists():
        raise MobileNetsError(f"--out {out}: already holds a run (last.pt); continue it with --resume {out} "
                              "or choose another --out")
    cfg = validate({k: v for k, v in cfg.items() if k != "_explicit"})

    ctx = distributed.setup(cfg.get("device"))
    try:
        return _run(cfg, out, ckpt, ctx, progress)
    finally:
        distributed.teardown(ctx)


def _run(cfg, out, ckpt, ctx, progress) -> dict:
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
        set_rng_state(ckpt["rng"], dev)

    preprocessing = task.preprocessing()
    metrics_path = out / "metrics.jsonl"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            truncate_metrics(metrics_path, epoch)
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
                "state_dict": plain_state(raw), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng_state(dev), "best_metric": best, "best_epoch": best_epoch,
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
                    kept = (f"{out / 'last.pt'} (epoch {checkpoint_epoch(out)})" if (out / "last.pt").exists()
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
                    append_jsonl(out / "steps.jsonl", {"step": global_step, "epoch": epoch + 1,
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
                append_jsonl(metrics_path, record)
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
    report.update(task.finish(out, ema.module if ema is not None else raw, bs, ctx, memory_format, report))
    if ctx.main:
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
        if tb is not None:
            tb.close()
    return report


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))
