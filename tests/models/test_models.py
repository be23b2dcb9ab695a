import pytest
import torch

import mobilenets
from mobilenets import MobileNetsError, create_model, list_models
from mobilenets.models.mobilenet import model_defaults
from mobilenets.models.layers import Conv2dSame, same_padding
from mobilenets.models.specs import build_arch
from mobilenets.models.tables import V2_BLOCKS

FAMILIES = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
# Registered classifiers; detection and segmentation models are tested in test_heads.py.
CLASSIFIERS = [n for n in list_models() if "family" in model_defaults(n)]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_model_runs_forward_at_small_resolution(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_channels_last_gives_same_output(name):
    torch.manual_seed(0)
    model = create_model(name, width_mult=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_v2_follows_table2():
    arch = build_arch("mobilenet_v2")
    assert len(arch.blocks) == sum(n for _, _, n, _ in V2_BLOCKS) == 17
    assert [b.out_ch for b in arch.blocks] == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64,
                                               96, 96, 96, 160, 160, 160, 320]
    assert arch.blocks[0].expand_ch == 32 and arch.blocks[1].expand_ch == 16 * 6
    assert arch.total_stride == 32 and arch.last_conv_ch == 1280


def test_v2_shortcut_only_where_stride_1_and_channels_match():
    model = create_model("mobilenet_v2")
    residual = [i for i, b in enumerate(model.blocks) if b.residual]
    assert residual == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    first = model.blocks[0]
    assert isinstance(first.expand, torch.nn.Identity)   # t = 1: no expansion conv
    assert isinstance(model.blocks[1].project.act, torch.nn.Identity)   # linear bottleneck


def test_width_multiplier_rounding_and_last_layer_rule():
    assert build_arch("mobilenet_v2", 0.35).stem_ch == 16
    assert build_arch("mobilenet_v2", 0.5).last_conv_ch == 1280      # kept for α < 1
    assert build_arch("mobilenet_v2", 1.4).last_conv_ch == 1792      # scaled for α > 1
    assert [b.out_ch for b in build_arch("mobilenet_v1", 0.25).blocks][:3] == [16, 32, 32]
    v3 = build_arch("mobilenet_v3_large", 0.75)
    assert v3.head_ch == 1280 and v3.last_conv_ch == 720


def test_v3_blocks_and_minimalistic():
    large = build_arch("mobilenet_v3_large")
    assert [b.se_ch for b in large.blocks if b.se_ch][:3] == [24, 32, 32]
    assert {b.act for b in large.blocks} == {"relu", "hswish"}
    assert large.last_conv_ch == 960 and large.head_ch == 1280
    small = build_arch("mobilenet_v3_small")
    assert small.last_conv_ch == 576 and small.head_ch == 1024 and small.blocks[0].se_ch == 8
    minimal = build_arch("mobilenet_v3_large", minimalistic=True)
    assert all(b.se_ch == 0 and b.act == "relu" and b.kernel == 3 for b in minimal.blocks)
    m = create_model("mobilenet_v3_small", minimalistic=True)
    assert not any(isinstance(x, torch.nn.Hardswish) for x in m.modules())


def test_create_model_options_from_the_issue():
    m = mobilenets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1)
    assert m.stem.conv.in_channels == 1 and m.classifier.out_features == 10
    out = m.eval()(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 10)


def test_small_input_keeps_spatial_detail():
    m = create_model("mobilenet_v2", small_input=True, in_chans=1, num_classes=10).eval()
    assert m.arch.total_stride == 8
    feats = m.forward_features(torch.randn(1, 1, 28, 28))
    assert feats.shape[-2:] == (4, 4)
    full = create_model("mobilenet_v2", in_chans=1).eval().forward_features(torch.randn(1, 1, 32, 32))
    assert full.shape[-2:] == (1, 1)


def test_features_only_and_feature_info():
    m = create_model("mobilenet_v2", features_only=True).eval()
    info = m.feature_info
    assert [i["reduction"] for i in info] == [2, 4, 8, 16, 32]
    assert [i["num_chs"] for i in info] == [16, 24, 32, 96, 320]
    feats = m(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (24, 16, 16), (32, 8, 8),
                                                    (96, 4, 4), (320, 2, 2)]
    m = create_model("mobilenet_v3_small", features_only=True, out_indices=(0, 4))
    assert [i["module"] for i in m.feature_info] == ["stem", "blocks.10"]
    assert [f.shape[1] for f in m(torch.randn(1, 3, 64, 64))] == [16, 96]


def classifier_maps(name, modules, x, **kw):
    """The tensors that the named modules of a classifier output, seen by hooks."""
    torch.manual_seed(0)
    full = create_model(name, **kw).eval()
    seen = {}
    for module in modules:
        full.get_submodule(module).register_forward_hook(lambda m, i, o, k=module: seen.setdefault(k, o))
    with torch.no_grad():
        full(x)
    return full, [seen[m] for m in modules]


def test_features_only_model_has_the_whole_api():
    m = create_model("mobilenet_v3_large", features_only=True, out_indices=(1, 3)).eval()
    # V3-Large strides at blocks 1, 3, 6 and 12, so the levels end at blocks 0, 2, 5, 11, 14
    assert [(i["module"], i["reduction"]) for i in m.feature_info] == [("blocks.2", 4), ("blocks.11", 16)]
    assert len(m.blocks) == 12     # nothing past the deepest requested level
    x = torch.randn(1, 3, 64, 64)
    full, expected = classifier_maps("mobilenet_v3_large", ["blocks.2", "blocks.11"], x)
    m.load_state_dict({k: v for k, v in full.state_dict().items() if k in m.state_dict()})
    with torch.no_grad():
        maps = m(x)
        deepest = m.forward_features(x)
    assert [tuple(t.shape[1:]) for t in maps] == [(24, 16, 16), (112, 4, 4)]
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(deepest, maps[-1])
    assert m.num_features == 112
    for call in (lambda: m.forward_head(deepest), m.get_classifier, lambda: m.reset_classifier(3)):
        with pytest.raises(MobileNetsError, match="a features_only model has no head"):
            call()


def test_expansion_levels_and_last_conv():
    m = create_model("mobilenet_v2", features_only=True, feature_location="expansion",
                     keep_last_conv=True).eval()
    # V2 strides at blocks 1, 3, 6, 13, whose inputs (16, 24, 32, 96 channels) expand 6×
    assert [i["num_chs"] for i in m.feature_info] == [96, 144, 192, 576, 320, 1280]
    assert [i["reduction"] for i in m.feature_info] == [2, 4, 8, 16, 32, 32]
    modules = [i["module"] for i in m.feature_info]
    assert modules[:4] == ["blocks.1.expand", "blocks.3.expand", "blocks.6.expand", "blocks.13.expand"]
    x = torch.randn(1, 3, 64, 64)
    full, expected = classifier_maps("mobilenet_v2", modules, x)
    m.load_state_dict({k: v for k, v in full.state_dict().items() if k in m.state_dict()})
    with torch.no_grad():
        for got, want in zip(m(x), expected):
            torch.testing.assert_close(got, want)
    with pytest.raises(MobileNetsError, match="feature_location='middle' is not one of"):
        create_model("mobilenet_v2", features_only=True, feature_location="middle")
    with pytest.raises(MobileNetsError, match="mobilenet_v1 has no last 1×1 conv"):
        create_model("mobilenet_v1", features_only=True, keep_last_conv=True)


def test_output_stride_dilates_instead_of_striding():
    m = create_model("mobilenet_v2", features_only=True, output_stride=16).eval()
    assert [i["reduction"] for i in m.feature_info] == [2, 4, 8, 16, 16]
    assert m.blocks[14].depthwise.conv.dilation == (2, 2)
    assert m(torch.randn(1, 3, 64, 64))[-1].shape[-1] == 4


def test_ablation_switches():
    relu6 = create_model("mobilenet_v2", proj_act="relu6")
    assert isinstance(relu6.blocks[3].project.act, torch.nn.ReLU6)
    none = create_model("mobilenet_v2", shortcut="none")
    assert not any(b.residual for b in none.blocks)
    exp = create_model("mobilenet_v2", shortcut="expansion")
    assert sum(b.expansion_residual for b in exp.blocks) == 13
    t4 = build_arch("mobilenet_v2", expand_ratio=4)
    assert t4.blocks[0].expand_ch == 32 and t4.blocks[1].expand_ch == 64
    for m in (relu6, none, exp):   # all of them train: backward through the in-place adds
        m(torch.randn(2, 3, 32, 32)).sum().backward()


def test_same_padding_pads_bottom_right_at_stride_2():
    m = create_model("mobilenet_v2", padding="same").eval()
    assert isinstance(m.stem.conv, Conv2dSame)
    # 224 at stride 2: out 112, total (112 - 1)·2 + 3 - 224 = 1, after; 225: 2, split evenly
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(225, 3, 2) == (1, 1)
    assert m.stem.conv.padding == (0, 0) and m.stem.bn.eps == 1e-3
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_weight_init_as_reference():
    torch.manual_seed(0)
    m = create_model("mobilenet_v2")
    w = m.classifier.weight
    assert abs(w.std().item() - 0.01) < 1e-3 and m.classifier.bias.abs().sum() == 0
    conv = m.blocks[5].project.conv.weight      # kaiming fan_out: std = sqrt(2 / (out * k * k))
    assert abs(conv.std().item() - (2 / 32) ** 0.5) < 0.01


def test_registry_aliases_and_unknown_name():
    names = list_models()
    for alias in ("mobilenet_v2_140", "mobilenet_v3_large_075", "mobilenet_v1_025",
                  "mobilenet_v3_small_minimal_100"):
        assert alias in names
    assert create_model("mobilenet_v1_025").arch.stem_ch == 8
    assert "mobilenet_v3_small" in list_models("*v3_small*")
    with pytest.raises(MobileNetsError, match="did you mean mobilenet_v2"):
        create_model("mobilenet_v22")


@pytest.mark.parametrize("kwargs, match", [
    (dict(width_mult=0), "width_mult=0 is out of range"),
    (dict(width_mult=-1.0), "width_mult=-1.0 is out of range"),
    (dict(width_mult="wide"), "width_mult='wide' is not a number"),
    (dict(width_mult=float("nan")), "out of range"),
    (dict(in_chans=0), "in_chans=0 is out of range"),
    (dict(num_classes=-3), "num_classes=-3"),
    (dict(small_input=True, output_stride=16), "conflict"),
    (dict(minimalistic=True), "MobileNetV3 only"),
    (dict(shortcut="sideways"), "shortcut='sideways'"),
    (dict(colour="red"), "does not take colour"),
])
def test_bad_options_are_one_line_errors(kwargs, match):
    name = "mobilenet_v2"
    with pytest.raises(MobileNetsError, match=match) as e:
        create_model(name, **kwargs)
    assert "\n" not in str(e.value)
