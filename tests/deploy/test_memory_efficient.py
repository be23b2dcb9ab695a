import pytest
import torch

import mobilenets
from mobilenets.deploy.fuse import prepare_for_inference
from mobilenets.deploy.memory_efficient import SplitInvertedResidual, measured_peak_bytes, memory_efficient
from test_fuse import randomize_bn


@pytest.mark.parametrize("name,kw", [
    ("mobilenet_v2", {}),
    ("mobilenet_v2", {"shortcut": "expansion"}),
    ("mobilenet_v3_large", {}),
    ("mobilenet_v3_small", {"padding": "same"}),
])
@pytest.mark.parametrize("splits", [1, 5])
def test_split_blocks_equal_plain_blocks(name, kw, splits):
    torch.manual_seed(0)
    model = randomize_bn(mobilenets.create_model(name, width_mult=0.35, **kw))
    x = torch.randn(2, 3, 64, 64)
    split = memory_efficient(model, splits)
    n_split = sum(isinstance(m, SplitInvertedResidual) for m in split.modules())
    # V3's blocks with squeeze-excite stay whole: their gate pools over all expanded channels.
    assert n_split == sum(1 for b in model.blocks if isinstance(b.se, torch.nn.Identity))
    with torch.inference_mode():
        ref = model(x)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            got = split(inp)
            assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_v1_blocks_are_not_split():
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25).eval()
    assert not any(isinstance(m, SplitInvertedResidual) for m in memory_efficient(model, 4).modules())


def test_splitting_lowers_measured_peak_memory():
    torch.manual_seed(0)
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5).eval()
    x = torch.randn(1, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    plain = measured_peak_bytes(prepare_for_inference(model), x)
    split = measured_peak_bytes(memory_efficient(model, 8), x)
    # Without splits the 48-channel 48×48 expansion of block 1 is whole (442 KB); with 8 splits
    # it never is.
    assert plain >= 48 * 48 * 48 * 4
    assert split < 0.75 * plain, (plain, split)


@pytest.mark.parametrize("name", ["mobilenet_v1_025", "mobilenet_v2_035", "mobilenet_v3_large_075",
                                  "mobilenet_v3_small", "mobilenet_v4_conv_small_035"])
def test_profiler_splits_exactly_the_blocks_the_executor_splits(name):
    # The Table 3 memory rows (models/profile.py) read the split rule from the specs; the
    # executor reads it from the built modules. They must pick the same blocks.
    from mobilenets.models.specs import splittable
    model = mobilenets.create_model(name).eval()
    split = memory_efficient(model, 2, channels_last=False)
    executor = [isinstance(b, SplitInvertedResidual) for b in split.blocks]
    assert executor == [splittable(spec) for spec in model.arch.blocks]
