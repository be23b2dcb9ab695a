"""The claims' verbs: relu6-int8, dead-kernels, last-stage."""
import json

import pytest
import torch
from torch import nn

from mobilenets.analysis.dead_kernels import dead_kernels, depthwise_convs
from mobilenets.analysis.last_stage import last_stage_study
from mobilenets.cli.main import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.mobilenet import create_model

TINY = ["--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-test", "64"]


class TwoDepthwise(nn.Module):
    """A pointwise conv (not depthwise) and two depthwise convs with known zeroed kernels."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(8, 8, 1)
        self.dw1 = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.dw2 = nn.Conv2d(4, 4, 5, groups=4, bias=False)
        self.single = nn.Conv2d(1, 1, 3, groups=1)   # groups == in_channels but only one channel
        with torch.no_grad():
            self.dw1.weight.fill_(1.0)
            self.dw1.weight[[1, 4, 6]] = 0.0            # 3 of 8 dead
            self.dw1.weight[7] = 0.005                   # norm 0.015: dead only absolutely
            self.dw2.weight.fill_(0.5)
            self.dw2.weight[2] = 0.001                   # norm 0.005: dead both ways


def test_dead_kernel_fraction_on_known_zeroed_kernels():
    model = TwoDepthwise()
    assert [name for name, _ in depthwise_convs(model)] == ["dw1", "dw2"]
    # dw1: median of norms {0,0,0,3,3,3,3,0.015} = (0.015 + 3) / 2; 1e-2 of that is 0.030.
    r = dead_kernels(model, relative=1e-2, absolute=0.02)
    dw1, dw2 = r["layers"]
    assert (dw1["dead_relative"], dw1["dead_absolute"]) == (4, 4)
    assert dw1["median_norm"] == pytest.approx((0.015 + 3.0) / 2, rel=1e-4)
    assert (dw2["dead_relative"], dw2["dead_absolute"]) == (1, 1)
    assert r["kernels"] == 12 and r["fraction_relative"] == pytest.approx(5 / 12)
    # An absolute threshold of 0.01 keeps the 0.015 kernel alive.
    assert dead_kernels(model, absolute=0.01)["dead_absolute"] == 4


def test_dead_kernels_refuses_a_model_without_depthwise_convs():
    with pytest.raises(MobileNetsError, match="no depthwise conv"):
        dead_kernels(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_a_fresh_v1_has_one_depthwise_layer_per_separable_block():
    # V1 Table 1: 13 depthwise separable layers; no kernel of a fresh model is near zero.
    model = create_model("mobilenet_v1", width_mult=0.25)
    r = dead_kernels(model)
    assert r["depthwise_layers"] == 13 and r["dead_relative"] == 0


def test_last_stage_madds_saved_match_the_papers_shapes():
    # V3 Figure 5 at 224 px, V3-Large 1.0: the original stage runs at 7×7 = 49 positions
    #   3×3 depthwise on 960 channels     49 · 960 · 9      =    423,360
    #   1×1 projection 960 → 320          49 · 960 · 320    = 15,052,800
    #   1×1 conv 320 → 1280 before pool   49 · 320 · 1280   = 20,070,400
    # the efficient stage has instead the 1×1 960 → 1280 after pooling: 960 · 1280 = 1,228,800.
    # The 1×1 expansion 160 → 960 and the 1280 → 1000 classifier are in both.
    saved = 49 * 960 * 9 + 49 * 960 * 320 + 49 * 320 * 1280 - 960 * 1280
    assert saved == 34_317_760
    r = last_stage_study(latency=False)
    assert r["last_stage"]["madds_saved"] == saved
    assert r["last_stage"]["madds_saved_minus_paper"] == saved - 30e6
    published = r["variants"][0]
    assert published["madds"] == 216_589_760 and published["options"] == {}   # torchvision's V3-Large count
    # The activation arms change no multiply-add.
    assert {v["madds"] for v in r["variants"] if "hswish_from" in v["options"]} == {published["madds"]}


def test_original_last_stage_layers():
    arch = create_model("mobilenet_v3_large", last_stage="original").arch
    extra = arch.blocks[-1]
    assert (extra.in_ch, extra.expand_ch, extra.out_ch, extra.kernel, extra.se_ch) == (160, 960, 320, 3, 0)
    assert (arch.last_conv_ch, arch.head_ch) == (1280, None)
    with pytest.raises(MobileNetsError, match="V3-Large"):
        create_model("mobilenet_v3_small", last_stage="original")
    with pytest.raises(MobileNetsError, match="last_stage"):
        create_model("mobilenet_v3_large", last_stage="late")


def test_hswish_from_places_the_first_hswish_layer():
    table = [b.act for b in create_model("mobilenet_v3_large").arch.blocks]
    # V3 Table 1's NL column: ReLU in the first 6 bnecks, h-swish in the other 9.
    assert table == ["relu"] * 6 + ["hswish"] * 9
    at112 = create_model("mobilenet_v3_large", hswish_from=11).arch
    # Table 1's first 112-channel row is the 11th bneck (index 11 after the stem).
    assert [b.out_ch for b in at112.blocks].index(112) == 10
    assert [b.act for b in at112.blocks] == ["relu"] * 10 + ["hswish"] * 5
    assert at112.stem_act == "relu" and at112.last_conv_act == "hswish"
    relu = create_model("mobilenet_v3_large", hswish_from=17).arch
    assert {relu.stem_act, relu.last_conv_act, relu.head_act, *(b.act for b in relu.blocks)} == {"relu"}
    with pytest.raises(MobileNetsError, match="hswish_from"):
        create_model("mobilenet_v3_large", hswish_from=18)
    with pytest.raises(MobileNetsError, match="MobileNetV3 options"):
        create_model("mobilenet_v2", hswish_from=0)


def test_last_stage_verb_writes_its_json(tmp_path, capsys):
    results = tmp_path / "ls.json"
    assert main(["last-stage", "--no-latency", "--results", str(results), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(results.read_text())
    assert printed == saved
    assert {"variants", "last_stage", "paper", "command"} <= set(saved)
    assert saved["command"].startswith("mobilenets last-stage")


@pytest.mark.slow
@pytest.mark.needs_fmnist
def test_relu6_int8_runs_end_to_end(tmp_path, capsys, one_thread):
    results, fig = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["relu6-int8", "--seeds", "1", *TINY, "--calib-size", "16", "--runs", str(tmp_path / "runs"),
            "--results", str(results), "--out", str(fig), "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert [a["label"] for a in r["arms"]] == ["ReLU", "ReLU6"]
    for a in r["arms"]:
        assert a["runs"] == 1 and a["eval_images"] == 64
        assert 0 <= a["top1_int8"]["mean"] <= 1 and a["top1_fp32"]["std"] is None
        assert a["drop"]["mean"] == pytest.approx(a["top1_fp32"]["mean"] - a["top1_int8"]["mean"])
    assert fig.stat().st_size > 0 and json.loads(results.read_text())["arms"] == r["arms"]
    # Rerunning continues from results.jsonl: nothing is trained again.
    assert main(argv) == 0
    lines = (tmp_path / "runs" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2


@pytest.mark.slow
@pytest.mark.needs_fmnist
def test_dead_kernels_train_runs_end_to_end(tmp_path, capsys, one_thread):
    results = tmp_path / "d.json"
    argv = ["dead-kernels", "--train", *TINY, "--runs", str(tmp_path / "runs"),
            "--results", str(results), "--out", str(tmp_path / "d.png"), "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    v1, v2 = r["models"]
    assert (v1["model"], v2["model"]) == ("mobilenet_v1", "mobilenet_v2")
    # V1: 13 depthwise layers; V2 Table 2: 17 bottlenecks, each with one depthwise conv.
    assert (v1["depthwise_layers"], v2["depthwise_layers"]) == (13, 17)
    assert all(0 <= m["fraction_relative"] <= 1 and m["layers"] for m in r["models"])
    assert "not folded" in r["weights"] and results.is_file()


def test_dead_kernels_without_files_is_one_line_exit_2(tmp_path, capsys):
    assert main(["dead-kernels", "--results", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no weights file given" in err
