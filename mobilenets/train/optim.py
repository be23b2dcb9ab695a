"""Optimisers, learning-rate schedules, the weight EMA and one optimisation step."""
from __future__ import annotations

import math

import torch
from torch import nn

WEIGHT_DECAY_ON = ("all", "conv")


def _regularized_by_reference(m: nn.Module) -> bool:
    # Depthwise filters have few parameters each and decay would shrink them towards zero
    # (V1 §3.2: "little or no weight decay"); slim regularizes neither them, BN nor biases.
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and not (m.groups > 1 and m.groups == m.in_channels)


def split_weight_decay(model: nn.Module, cfg: dict) -> tuple[list, list]:
    """(parameters with weight decay, parameters without). weight_decay_on "all": every tensor
    but 1-D ones (BN, biases, layer scale), which wd_norm_bias adds; "conv": as the reference
    trainer, only the weights of full and 1×1 convs and linear layers."""
    decay, no_decay = [], []
    if cfg.get("weight_decay_on", "all") == "conv":
        chosen = {id(m.weight) for m in model.modules() if _regularized_by_reference(m)}
        for p in model.parameters():
            if p.requires_grad:
                (decay if id(p) in chosen else no_decay).append(p)
        return decay, no_decay
    for p in model.parameters():
        if p.requires_grad:
            # BN scales/shifts and biases are not regularised in the modern recipes (1-D tensors).
            (no_decay if p.ndim <= 1 and not cfg["wd_norm_bias"] else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    decay, no_decay = split_weight_decay(model, cfg)
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
