import torch

from mobilenets.models.layers import InvertedResidual, SamePad, SqueezeExcite
from mobilenets.models.specs import make_divisible


def test_make_divisible_reference_rule():
    assert make_divisible(32 * 0.35) == 16          # never below the divisor
    assert make_divisible(24 * 0.75) == 24          # 16 would be > 10% below 18
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(96 * 0.35) == 32 and make_divisible(20) == 24


def test_same_pad_matches_tensorflow_rule():
    pad = SamePad(3, 2)
    assert pad._pad(112) == (0, 1) and pad._pad(7) == (1, 1)
    assert SamePad(5, 2)._pad(14) == (1, 2)
    assert pad(torch.zeros(1, 1, 4, 4)).shape[-2:] == (5, 5)


def test_squeeze_excite_gates_channels():
    se = SqueezeExcite(8, 8)
    torch.nn.init.zeros_(se.fc2.weight)
    torch.nn.init.constant_(se.fc2.bias, -3.0)        # h-sigmoid(-3) = 0: everything gated off
    x = torch.randn(2, 8, 5, 5)
    assert se(x).abs().max() == 0
    torch.nn.init.constant_(se.fc2.bias, 3.0)         # h-sigmoid(3) = 1: passes through
    torch.testing.assert_close(se(x), x)


def test_v1_block_is_depthwise_then_pointwise_with_relu():
    block = InvertedResidual(32, 64, 32, act="relu", proj_act="relu", shortcut="none")
    assert isinstance(block.expand, torch.nn.Identity) and not block.residual
    assert block.depthwise.conv.groups == 32 and block.project.conv.kernel_size == (1, 1)
    out = block(torch.randn(1, 32, 8, 8))
    assert out.min() >= 0 and out.shape == (1, 64, 8, 8)


def test_residual_block_adds_its_input():
    block = InvertedResidual(16, 16, 96).eval()
    torch.nn.init.zeros_(block.project[1].weight)     # branch output 0 -> block is identity
    x = torch.randn(1, 16, 6, 6)
    torch.testing.assert_close(block(x), x)


def test_eval_folds_batch_norm_into_conv_with_the_same_output():
    from mobilenets.models.layers import ConvBNAct, bn_unfolded
    torch.manual_seed(0)
    unit = ConvBNAct(8, 16, 3, 2, act="relu6", padding="same")
    with torch.no_grad():                   # BN with non-trivial statistics and affine terms
        bn = unit[2]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    unit.eval()
    x = torch.randn(2, 8, 9, 9)
    folded = unit(x)
    with bn_unfolded(unit):
        plain = unit(x)
    assert unit.fold_bn_in_eval
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-6)
    assert folded.shape == (2, 16, 5, 5)
    assert (folded - plain).abs().max() > 0     # the two paths really are different arithmetic


def test_bn_unfolded_is_per_model_and_restores_instance_settings():
    from mobilenets.models.layers import ConvBNAct, bn_unfolded
    a, b = ConvBNAct(4, 4, 1), ConvBNAct(4, 4, 1)
    b.fold_bn_in_eval = False                      # a user's own instance setting survives
    with bn_unfolded(a), bn_unfolded(b):
        assert not a.fold_bn_in_eval and not b.fold_bn_in_eval
        assert ConvBNAct.fold_bn_in_eval           # the class default is never touched
    assert a.fold_bn_in_eval and "fold_bn_in_eval" not in a.__dict__
    assert b.fold_bn_in_eval is False
