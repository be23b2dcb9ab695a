"""Quantization-aware fine-tuning for the ONNX Runtime int8 recipe in `quantize`.

The network is fine-tuned with the rounding it will meet in int8 simulated in the forward pass
(straight-through gradients), then handed back in float: `quantize` exports it and ONNX Runtime
quantizes it with the same scheme, so the weights QAT adapted to are the weights int8 runs:
- batch norm folded first (the int8 graph has no BN, so training sees the folded convs);
- weights: int8 symmetric per output channel with scale max|w| / 127, recomputed every step —
  the scale ONNX Runtime's symmetric per-channel quantizer derives from the same weights;
- activations: uint8 asymmetric per tensor after every conv unit and block, ranges tracked by a
  moving-average min/max observer, as ONNX Runtime's calibration will later measure them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver
from torch.nn.utils import parametrize

from .fuse import fold_batchnorm
from ..models.layers import ConvBNAct, InvertedResidual
from ..datasets.calibration import load_images, preprocessed
from ..core.errors import MobileNetsError


class PerChannelWeightFakeQuant(nn.Module):
    """w → int8 symmetric per-output-channel rounding of w, with a straight-through gradient."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().amax(dim=tuple(range(1, w.ndim))) / 127).clamp_min(1e-12)
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def _activation_fake_quant() -> FakeQuantize:
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                        dtype=torch.quint8, qscheme=torch.per_tensor_affine)


def attach(model: nn.Module) -> list:
    """Fold BN and add weight and activation fake-quantization in place; returns hook handles."""
    fold_batchnorm(model.eval())
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", PerChannelWeightFakeQuant())
        if isinstance(m, (ConvBNAct, InvertedResidual)):
            m.act_fake_quant = _activation_fake_quant()
            handles.append(m.register_forward_hook(lambda mod, inp, out: mod.act_fake_quant(out)))
    return handles


def detach(model: nn.Module, handles: list) -> nn.Module:
    """Remove fake-quantization, keeping the fine-tuned float weights."""
    for h in handles:
        h.remove()
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        if hasattr(m, "act_fake_quant"):
            del m.act_fake_quant
    return model.eval()


def finetune(model: nn.Module, data: str, pre: dict, steps: int = 300, batch: int = 64,
             lr: float = 1e-3, seed: int = 0, fake_quant: bool = True, log=print) -> tuple[nn.Module, dict]:
    """QAT fine-tuning on the training split of `data`: (BN-folded float model, summary).

    fake_quant=False trains in plain float with batch norm (a quick baseline for the checks)."""
    images, labels = load_images(data, pre, "train")
    if labels is None:
        raise MobileNetsError(f"--qat needs labelled training images; {data!r} has none")
    qmodel = copy.deepcopy(model)
    handles = attach(qmodel) if fake_quant else []
    qmodel.train()
    opt = torch.optim.SGD([p for p in qmodel.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = preprocessed(images[idx], pre)
        loss = F.cross_entropy(qmodel(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"{'qat' if fake_quant else 'float'} step {step + 1}/{steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.4f}")
    detach(qmodel, handles) if fake_quant else qmodel.eval()
    tail = losses[-min(20, len(losses)):]
    return qmodel, {"steps": steps, "batch": batch, "lr": lr, "final_loss": round(sum(tail) / len(tail), 4)}
