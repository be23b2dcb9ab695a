import torch

import torch.nn.functional as F

from mobilenets.models.layers import ConvBNAct, Conv2dSame, InvertedResidual, SqueezeExcite, same_padding
from mobilenets.models.specs import make_divisible


def test_make_divisible_reference_rule():
    assert make_divisible(32 * 0.35) == 16          # never below the divisor
    assert make_divisible(24 * 0.75) == 24          # 16 would be > 10% below 18
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(96 * 0.35) == 32 and make_divisible(20) == 24


def test_same_pad_matches_tensorflow_rule():
    # TF: out = ceil(n / s), total = (out - 1)·s + k - n, the odd pixel after
    assert same_padding(112, 3, 2) == (0, 1) and same_padding(7, 3, 2) == (1, 1)
    assert same_padding(14, 5, 2) == (1, 2) and same_padding(9, 3, 2, dilation=2) == (2, 2)
    conv = Conv2dSame(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.randn(1, 1, 4, 4)
    # a 4×4 input at stride 2 pads one row/column after only: the same as padding by hand
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (2, 2)


def test_conv_bn_act_names_its_parts_for_every_padding():
    for padding, stride in (("symmetric", 1), ("symmetric", 2), ("same", 1), ("same", 2)):
        unit = ConvBNAct(4, 8, 3, stride, padding=padding)
        assert [name for name, _ in unit.named_children()] == ["conv", "bn", "act"]
        assert sorted(unit.state_dict()) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean",
                                             "bn.running_var", "bn.weight", "conv.weight"]
    assert type(ConvBNAct(4, 8, 3, 2, padding="same").conv) is Conv2dSame
    assert type(ConvBNAct(4, 8, 3, 1, padding="same").conv) is torch.nn.Conv2d


def test_eval_runs_batch_norm_as_a_module():
    # Hooks on `bn` see the eval-mode forward pass, and its output is BN's formula applied to
    # the conv's output.
    torch.manual_seed(0)
    unit = ConvBNAct(8, 16, 3, 2, act=None, padding="same")
    with torch.no_grad():
        bn = unit.bn
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    unit.eval()
    seen = {}
    unit.bn.register_forward_hook(lambda m, i, o: seen.update(inputs=i[0], out=o))
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        y = unit(x)
        conv = unit.conv(x)
    assert "out" in seen and seen["out"] is y
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt())[:, None, None]
    torch.testing.assert_close(y, (conv - bn.running_mean[:, None, None]) * scale + bn.bias[:, None, None])


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
    torch.nn.init.zeros_(block.project.bn.weight)     # branch output 0 -> block is identity
    x = torch.randn(1, 16, 6, 6)
    torch.testing.assert_close(block(x), x)
