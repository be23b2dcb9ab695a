"""torchrun support: process group set-up, and batch norm synchronised across ranks on any device.

torch's SyncBatchNorm refuses CPU tensors, so on CPU (gloo) the ranks' batch statistics are
combined here with autograd-aware all-reduces; with it, N ranks compute exactly the forward and
backward pass of one process on the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import MobileNetsError


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str | None = None) -> Context:
    """Join the process group that torchrun describes in the environment (no-op without it):
    NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = check_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, local, dev)


def check_device(device) -> torch.device:
    """`device` as a torch.device that this machine has; one line naming it otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MobileNetsError(f"device={device!r} is not a device name; allowed: cpu, cuda, cuda:N, mps") from e
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MobileNetsError(f"device={device!r} needs a CUDA GPU and this machine has none "
                                  "that torch can use; use device='cpu'")
        if dev.index is not None and dev.index >= count:
            raise MobileNetsError(f"device={device!r}: this machine has {count} CUDA GPU(s); "
                                  f"allowed: cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise MobileNetsError(f"device={device!r} needs Apple's Metal (MPS), which this machine lacks; "
                              "use device='cpu'")
    elif dev.type not in ("cpu", "mps"):
        raise MobileNetsError(f"device={device!r} is not supported for training; allowed: cpu, cuda, cuda:N, mps")
    return dev


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(t)
    return t


def barrier(ctx: Context) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if ctx.distributed:
        dist.barrier()


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is also summed over ranks (each rank's input affects
    every rank's output)."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the mean and variance over all ranks' images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = x.new_full((1,), float(x.numel() // c))
        total = _SumOverRanks.apply(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[-1]
        mean = total[:c] / n
        # Two passes (mean, then squared deviations) keep the variance as exact as BatchNorm2d's.
        centered = x - mean[None, :, None, None]
        var = _SumOverRanks.apply((centered * centered).sum((0, 2, 3))) / n
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
            self.num_batches_tracked.add_(1)
        y = centered * torch.rsqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_bn(model)


def _swap_bn(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, _swap_bn(child))
    return module
