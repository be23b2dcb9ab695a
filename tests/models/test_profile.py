import pytest
import torch
from torch import nn

from mobilenets import MobileNetsError, create_model, profile
from mobilenets.analysis.paper import REFERENCE_COUNTS


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_reference_counts_exactly(name):
    r = profile(name, 224)
    assert (r["params"], r["params_without_bn"], r["madds"]) == REFERENCE_COUNTS[name]
    assert all(isinstance(r[k], int) for k in ("params", "params_without_bn", "madds"))


def test_result_keys_and_per_layer_rows():
    r = profile(create_model("mobilenet_v2", width_mult=1.4), resolution=224)
    assert {"model", "width_mult", "resolution", "params", "params_without_bn", "madds",
            "memory_table3_bytes_fp16", "peak_memory_bytes_fp16", "peak_memory_bytes_fp32",
            "layers"} <= set(r)
    assert r["model"] == "mobilenet_v2" and r["width_mult"] == 1.4 and r["resolution"] == 224
    assert sum(layer["madds"] for layer in r["layers"]) == r["madds"]
    first = r["layers"][0]
    assert first["name"] == "stem.conv" and first["kind"] == "conv"
    assert first["madds"] == 112 * 112 * 48 * 3 * 3 * 3 and first["output_shape"] == [48, 112, 112]
    kinds = {layer["kind"] for layer in r["layers"]}
    assert kinds == {"conv", "pointwise", "depthwise", "fc"}
    assert profile("mobilenet_v2_140")["madds"] == r["madds"]


def test_madds_follow_resolution_multiplier():
    # V1 Table 7 at 192 px; counts scale with the map area except the classifier.
    assert profile("mobilenet_v1", 192)["madds"] == 418_121_728
    r128 = profile("mobilenet_v1", 128)
    assert r128["params"] == profile("mobilenet_v1", 224)["params"]


@pytest.mark.parametrize("m, n, k, size", [(32, 64, 3, 56), (512, 512, 3, 14), (16, 24, 5, 7),
                                           (3, 1000, 7, 9)])
def test_separable_cost_ratio_is_one_over_n_plus_one_over_k2(m, n, k, size):
    standard = nn.Conv2d(m, n, k, padding=k // 2, bias=False)
    separable = nn.Sequential(nn.Conv2d(m, m, k, padding=k // 2, groups=m, bias=False),
                              nn.Conv2d(m, n, 1, bias=False))
    s, d = profile(standard, size), profile(separable, size)
    assert s["madds"] == k * k * m * n * size * size
    assert d["madds"] / s["madds"] == pytest.approx(1 / n + 1 / k ** 2, rel=1e-12)
    assert d["params"] / s["params"] == pytest.approx(1 / n + 1 / k ** 2, rel=1e-12)


def test_table3_memory_maxima():
    assert profile("mobilenet_v1")["memory_table3_bytes_fp16"] == 64 * 112 * 112 * 2
    v2 = profile("mobilenet_v2")
    assert v2["memory_table3_bytes_fp16"] == 16 * 112 * 112 * 2
    # With split expansions only the bottleneck outputs exist whole (§5.1): at each size the
    # widest Table 2 output c there, the stem's 32 channels being split too, and the pooled 1280
    # at 1×1. (The paper's printed rows differ at 56², 28² and 14²: docs/paper_tables.md.)
    size, widest = 112, {}
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        size //= s
        widest[size] = max(widest.get(size, 0), c)
    widest[1] = 1280
    assert [(row["size"], row["channels"]) for row in v2["memory_table3"]] == [
        (f"{s}x{s}", c) for s, c in sorted(widest.items(), reverse=True)]


def test_table3_memory_keeps_squeeze_excite_blocks_whole():
    # Derived from V3 Tables 1 and 2: a block with SE cannot be split (its gate pools all
    # expanded channels), so its input, expansion and depthwise output exist whole.
    # Large: block 3 (SE, exp 72) expands at 56² before its stride-2 depthwise; blocks 4-5
    # (SE, exp 120) at 28²; blocks 11-13 (SE, exp 672) at 14²; blocks 14-15 (SE, exp 960) at 7².
    large = profile("mobilenet_v3_large")
    assert [(row["size"], row["channels"]) for row in large["memory_table3"]] == [
        ("112x112", 16), ("56x56", 72), ("28x28", 120), ("14x14", 672), ("7x7", 960),
        ("1x1", 1280)]
    assert large["memory_table3_bytes_fp16"] == 72 * 56 * 56 * 2
    # Small: block 0 (SE, stride 2, no expansion) needs the stem's 16×112² output whole; block 3
    # (SE, exp 96) expands at 28²; block 8 (SE, exp 288) at 14²; blocks 9-10 (exp 576) at 7².
    small = profile("mobilenet_v3_small")
    assert [(row["size"], row["channels"]) for row in small["memory_table3"]] == [
        ("112x112", 16), ("56x56", 16), ("28x28", 96), ("14x14", 288), ("7x7", 576),
        ("1x1", 1024)]
    # Without SE (minimalistic) every V3 block splits again: only the bottlenecks count.
    minimal = profile("mobilenet_v3_large_minimal")
    assert dict((row["size"], row["channels"]) for row in minimal["memory_table3"])["14x14"] == 112


def test_eager_peak_memory_is_the_widest_op():
    # V2's widest op: batch norm over block 1's expansion, 96 channels at 112², input + output.
    r = profile("mobilenet_v2")
    assert r["peak_memory_bytes_fp32"] == 2 * 96 * 112 * 112 * 4
    assert r["peak_memory_bytes_fp16"] == r["peak_memory_bytes_fp32"] // 2


def test_eager_peak_counts_the_tensor_held_for_the_shortcut():
    block_only = nn.Sequential(create_model("mobilenet_v2").blocks[2])
    r = profile(block_only, 56)
    x, wide = 24 * 56 * 56, 144 * 56 * 56
    assert r["peak_memory_bytes_fp32"] == (x + 2 * wide) * 4


def test_profile_leaves_the_model_untouched_and_real():
    m = create_model("mobilenet_v3_small").train()
    before = m.blocks[3].expand.conv.weight.clone()
    profile(m, 96)
    assert m.training and m.blocks[3].expand.conv.weight.device.type == "cpu"
    assert torch.equal(before, m.blocks[3].expand.conv.weight)


def test_resolution_below_total_stride_is_an_error():
    with pytest.raises(MobileNetsError, match="resolution=16 is too small .* total stride 32"):
        profile("mobilenet_v2", 16)
    assert profile(create_model("mobilenet_v2", small_input=True), 28)["madds"] > 0


def test_small_v2_counts_follow_table2():
    # tests/v2_counts.py derives V2's counts from Table 2; at 224 px it gives the reference
    # implementation's 3,504,872 parameters and 300,774,272 MAdds, so the small models that the
    # training and ablation tests pin are held to the same derivation here, fast.
    from v2_counts import v2_counts
    assert v2_counts(1.0, 224) == (3_504_872, 300_774_272)
    for width in (0.35, 0.5):
        r = profile(create_model("mobilenet_v2", width_mult=width, small_input=True, in_chans=1,
                                 num_classes=10), 28)
        assert (r["params"], r["madds"]) == v2_counts(width, 28, 1, 10, small_input=True)
