"""MobileNetV4 against its reference implementation (timm) and through the library's paths.

Counts come from timm itself: parameters summed over `timm.create_model(name)`, multiply-adds
from torch's FLOP counter run on it (meta tensors, no arithmetic), halved. Conversion of timm
weights is checked in test_convert.py (test_timm_v4).
"""
import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mobilenets import MobileNetsError, create_model, list_models, profile
from mobilenets.cli import main
from mobilenets.models.mobilenet import model_defaults
from mobilenets.analysis.paper import TIMM_V4_COUNTS
from mobilenets.models.weights import save_weights

FAMILIES = ["mobilenet_v4_conv_small", "mobilenet_v4_conv_medium", "mobilenet_v4_conv_large",
            "mobilenet_v4_hybrid_medium", "mobilenet_v4_hybrid_large"]
# Every registered V4 model but the `_100` aliases of the families.
MODELS = [n for n in list_models("mobilenet_v4_*") if not n.endswith("_100")]

pytestmark = pytest.mark.usefixtures("one_thread")


def timm_name(name: str) -> str:
    return name.replace("mobilenet_v4_", "mobilenetv4_")


def timm_counts(name: str) -> tuple[int, int, int, int]:
    """(input size of timm's default weights, params, params outside batch norm, MAdds)."""
    timm = pytest.importorskip("timm")
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        reference = timm.create_model(timm_name(name)).eval()
    resolution = reference.pretrained_cfg["input_size"][-1]
    params = sum(p.numel() for p in reference.parameters())
    bn = sum(p.numel() for m in reference.modules() if isinstance(m, _BatchNorm)
             for p in m.parameters(recurse=False))
    # The counter charges 2 FLOPs per multiply-add of each convolution, matmul (attention's
    # Q·Kᵀ and attention·V included) and linear layer, and nothing for batch norm, activations,
    # softmax or layer scale: half of it is exactly what the profiler counts.
    with FlopCounterMode(display=False) as counter:
        reference(torch.empty(1, 3, resolution, resolution, device="meta"))
    return resolution, params, params - bn, counter.get_total_flops() // 2


def test_registry_has_timm_names_and_aliases():
    assert set(FAMILIES) <= set(list_models())
    for alias in ("mobilenet_v4_conv_small_035", "mobilenet_v4_conv_small_050",
                  "mobilenet_v4_hybrid_medium_075", "mobilenet_v4_hybrid_large_075"):
        assert alias in MODELS
    for family in FAMILIES:
        assert model_defaults(f"{family}_100") == {**model_defaults(family), "width_mult": 1.0}


@pytest.mark.parametrize("name", MODELS)
def test_counts_equal_timm_at_native_resolution(name):
    resolution, params, params_without_bn, madds = timm_counts(name)
    model = create_model(name)
    assert model.pretrained_cfg["resolution"] == resolution
    r = profile(model, resolution)
    assert (r["params"], r["params_without_bn"], r["madds"]) == (params, params_without_bn, madds)
    # the table docs/paper_tables.md shows is timm's
    assert TIMM_V4_COUNTS[name] == (resolution, params, params_without_bn, madds)


def test_attention_madds_by_hand():
    # Hybrid-M at 256 px: four Mobile MQA blocks at 16×16 whose keys and values are
    # downsampled to 8×8, four at 8×8 without downsampling; 4 heads, key = value dim 64.
    heads, dim = 4, 64
    expected = 4 * heads * (16 * 16) * (8 * 8) * (dim + dim) + 4 * heads * (8 * 8) * (8 * 8) * (dim + dim)
    rows = [layer for layer in profile("mobilenet_v4_hybrid_medium", 256)["layers"]
            if layer["kind"] == "attention"]
    assert len(rows) == 8 and sum(row["madds"] for row in rows) == expected == 41_943_040
    assert all(row["params"] == 0 for row in rows)


def test_conv_small_first_layers_by_hand():
    # Conv-S at 224: stem 3×3/s2 3→32 at 112², then a 3×3/s2 32→32 and a 1×1 32→32 at 56².
    layers = profile("mobilenet_v4_conv_small", 224)["layers"]
    assert [row["madds"] for row in layers[:3]] == [112 * 112 * 32 * 27, 56 * 56 * 32 * 32 * 9,
                                                    56 * 56 * 32 * 32]


@pytest.mark.parametrize("name,width", [("mobilenet_v4_conv_small", 0.5),
                                        ("mobilenet_v4_hybrid_medium", 0.75)])
def test_small_input_trains_at_28_px(name, width):
    # As for V1-V3: stem and first downsampling block at stride 1, total stride 8, so 28 px
    # Fashion-MNIST ends on a 4×4 map.
    torch.manual_seed(0)
    model = create_model(name, width_mult=width, small_input=True, in_chans=1, num_classes=10)
    assert model.arch.stem_stride == 1 and model.arch.total_stride == 8
    x = torch.randn(4, 1, 28, 28)
    assert model.forward_features(x).shape[-2:] == (4, 4)
    loss = torch.nn.functional.cross_entropy(model.train()(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium"])
def test_features_only_five_levels_as_timm(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(timm_name(name), features_only=True)
    model = create_model(name, features_only=True).eval()
    info = [(i["num_chs"], i["reduction"]) for i in model.feature_info]
    expected = list(zip(reference.feature_info.channels(), reference.feature_info.reduction()))
    # timm's last level is its 960-wide 1×1 conv, which we keep outside the blocks as
    # `last_conv` (as for V3); ours is the last block's output.
    assert info[:4] == expected[:4] and len(info) == 5
    assert info[4] == (model.arch.blocks[-1].out_ch, 32)
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 64 // r, 64 // r) for c, r in info]


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_dilates_the_last_stages(output_stride):
    model = create_model("mobilenet_v4_hybrid_medium_075", output_stride=output_stride).eval()
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 64, 64))
    assert out.shape[-1] == 64 // output_stride and model.arch.total_stride == output_stride


def test_options_that_do_not_apply_are_one_line_errors():
    with pytest.raises(MobileNetsError, match="act='relu6' applies to MobileNetV1/V2"):
        create_model("mobilenet_v4_conv_small", act="relu6")
    with pytest.raises(MobileNetsError, match="expand_ratio applies to MobileNetV2/V3"):
        create_model("mobilenet_v4_conv_small", expand_ratio=4)
    with pytest.raises(MobileNetsError, match="minimalistic=True applies to MobileNetV3 only"):
        create_model("mobilenet_v4_conv_small", minimalistic=True)


def test_cli_profile_json_at_native_resolution(capsys):
    assert main(["profile", "mobilenet_v4_conv_medium", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["resolution"] == 256 and r["params"] == 9_715_512 and r["madds"] == 1_080_244_224


def test_onnx_export_of_a_tiny_hybrid(tmp_path, capsys):
    # Attention (multi-query, downsampled keys and values) is the one new op for the exporters.
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("mobilenet_v4_hybrid_medium", width_mult=0.25, small_input=True,
                         in_chans=1, num_classes=10)
    pre = dict(resolution=32, resize=32, mean=[0.5], std=[0.5], in_chans=1,
               interpolation="bilinear")
    weights = tmp_path / "tiny.safetensors"
    save_weights(weights, model, {"preprocessing": pre})
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and "max relative error" in capsys.readouterr().out
