import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import mobilenets
from deploy_models import PRE
from mobilenets.deploy.qat import PerChannelWeightFakeQuant, attach, detach, finetune


def test_weight_fake_quant_is_int8_per_channel():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1, 1, 1)
    q = PerChannelWeightFakeQuant()(w)
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    steps = q / scale.view(4, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4)     # on each channel's int8 grid
    assert steps.abs().max() <= 127 + 1e-4
    assert ((q - w).abs() <= scale.view(4, 1, 1, 1) / 2 + 1e-6).all()


def test_attach_then_detach_keeps_float_weights():
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, small_input=True).eval()
    handles = attach(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    conv = model.blocks[1].expand.conv
    assert parametrize.is_parametrized(conv, "weight")
    raw = conv.parametrizations.weight.original.detach().clone()
    detach(model, handles)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(model.blocks[1].expand.conv.weight, raw)


@pytest.mark.needs_fmnist
def test_finetune_trains_with_fake_quant():
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35, small_input=True,
                                    in_chans=1, num_classes=10).eval()
    before = model.classifier.weight.detach().clone()
    tuned, info = finetune(model, "fashion-mnist", PRE, steps=3, batch=8, log=None)
    assert info["steps"] == 3 and torch.isfinite(torch.tensor(info["final_loss"]))
    assert not torch.equal(tuned.classifier.weight, before)
    assert torch.equal(model.classifier.weight, before)   # the input model is left alone
    assert not tuned.training and not any(parametrize.is_parametrized(m) for m in tuned.modules())
