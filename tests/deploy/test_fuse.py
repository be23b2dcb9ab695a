import pytest
import torch
from torch import nn

import mobilenets
from mobilenets import MobileNetsError
from mobilenets.deploy.fuse import fold_batchnorm, prepare_for_inference


def randomize_bn(model, seed=0):
    """Running statistics and affine parameters far from the identity, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name,kw,res", [
    ("mobilenet_v1", {"small_input": True}, 32),
    ("mobilenet_v2", {"small_input": True}, 32),
    ("mobilenet_v3_large", {"small_input": True}, 32),
    ("mobilenet_v3_small", {"padding": "same", "bn_eps": 1e-3}, 64),   # TF padding path
])
def test_fused_equals_unfused(name, kw, res):
    torch.manual_seed(0)
    model = randomize_bn(mobilenets.create_model(name, width_mult=0.35, **kw))
    x = torch.randn(2, 3, res, res)
    fused = prepare_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "original left intact"
    with torch.inference_mode():
        ref = model(x)
        got = fused(x.contiguous(memory_format=torch.channels_last))
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-5, rel


def test_fold_counts_every_batchnorm():
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == n_bn == 52


def test_fuse_is_the_inference_form_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = randomize_bn(mobilenets.create_model("mobilenet_v2", width_mult=0.35, small_input=True))
    fused = mobilenets.fuse(model.train())
    assert model.training and not fused.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert all(not p.requires_grad for p in fused.parameters())
    # the folded stem conv is BN's per-channel affine map applied to the conv: w·γ/σ, β − μ·γ/σ
    bn, conv = model.stem.bn, model.stem.conv
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    torch.testing.assert_close(fused.stem.conv.weight, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(fused.stem.conv.bias, bn.bias - bn.running_mean * scale)


def test_fold_refuses_training_mode():
    with pytest.raises(MobileNetsError, match="eval"):
        fold_batchnorm(mobilenets.create_model("mobilenet_v1", width_mult=0.25).train())
