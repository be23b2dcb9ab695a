"""Channel plans: per-layer widths, shortcut groups, and cutting a model down to a smaller plan
(checked against a model whose dropped channels were made exactly zero by hand)."""
import subprocess
import sys

import pytest
import torch

from mobilenets import create_model, load_model, profile
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.cut import cut_to_plan
from mobilenets.models.layers import ConvBNAct
from mobilenets.models.plan import plan_of, scale_plan, shortcut_groups
from mobilenets.models.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def test_v2_shortcut_groups_follow_table_2():
    # V2 Table 2: a row of n bottlenecks shares one width; rows 16 (n 1) and the stride-1 row 96
    # start new groups because their input width differs (32→16, 64→96).
    groups = shortcut_groups(create_model("mobilenet_v2").arch)
    assert groups == [["stem"], [0], [1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12], [13, 14, 15], [16]]


def test_plan_of_rebuilds_the_same_network():
    for name in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v4_conv_small"):
        base = create_model(name)
        same = create_model(name, channel_plan=plan_of(base.arch))
        assert {k: v.shape for k, v in same.state_dict().items()} == \
               {k: v.shape for k, v in base.state_dict().items()}


def test_plan_that_breaks_a_shortcut_group_is_refused():
    plan = plan_of(create_model("mobilenet_v2").arch)
    plan["out"][2] = 16                       # block 2 adds block 1's output (24 wide)
    with pytest.raises(MobileNetsError, match=r"shortcut group: out\[1\]=24, out\[2\]=16"):
        create_model("mobilenet_v2", channel_plan=plan)
    with pytest.raises(MobileNetsError, match="expand\\[0\\]"):   # block 0 has no expansion
        create_model("mobilenet_v2", channel_plan={"expand": [32] + plan["expand"][1:]})
    with pytest.raises(MobileNetsError, match="17 blocks"):
        create_model("mobilenet_v2", channel_plan={"out": [16]})


def test_planned_v1_madds_match_the_papers_formula():
    # V1 §3.1: a separable layer costs D_K²·M·D_F² (depthwise) + M·N·D_F² (pointwise).
    model = create_model("mobilenet_v1")
    plan = scale_plan(plan_of(model.arch), 0.5)
    planned = create_model("mobilenet_v1", channel_plan=plan, num_classes=10)
    res, madds = 224, 0
    size = res // 2
    madds += 3 * 3 * 3 * plan["stem"] * size * size
    prev = plan["stem"]
    for spec, out in zip(model.arch.blocks, plan["out"]):
        size //= spec.stride
        madds += 9 * prev * size * size + prev * out * size * size
        prev = out
    madds += prev * 10
    assert profile(planned, resolution=res)["madds"] == madds


def test_a_coinciding_width_adds_no_shortcut():
    # Block 10 (64 → 96, stride 1) has no shortcut; widths made equal must not create one.
    plan = plan_of(create_model("mobilenet_v2").arch)
    for i in range(6, 10):
        plan["out"][i] = 96
    model = create_model("mobilenet_v2", channel_plan=plan)
    assert model.blocks[10].in_channels == model.blocks[10].out_channels == 96
    assert not model.blocks[10].residual and model.blocks[11].residual


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


def _silence(unit: ConvBNAct, idx):
    """Make the unit's output channels `idx` exactly zero (activations here map 0 to 0)."""
    unit.conv.weight.data[idx] = 0
    unit.bn.weight.data[idx] = 0
    unit.bn.bias.data[idx] = 0


@pytest.mark.parametrize("name", ["mobilenet_v3_small_050", "mobilenet_v2_035"])
def test_cut_equals_the_model_with_those_channels_zeroed(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    _randomise_bn(model)
    plan = plan_of(model.arch)
    g = torch.Generator().manual_seed(2)

    def drop(width, n):
        return torch.randperm(width, generator=g)[:n]
    with torch.no_grad():
        # Each run of blocks joined by shortcuts is one width: silence the same channels in the
        # layer that starts it and in every projection that adds to it.
        group, writers = [0], [model.stem]
        groups = []
        for i, block in enumerate(model.blocks):
            if block.residual:
                writers.append(block.project)
            else:
                groups.append(writers)
                writers = [block.project]
        groups.append(writers)
        group_drops = []
        for writers in groups:
            idx = drop(writers[0].out_channels, 2)
            for unit in writers:
                _silence(unit, idx)
            group_drops.append(idx)
        k = 0
        for i, block in enumerate(model.blocks):
            if not block.residual:
                k += 1
            if isinstance(block.expand, ConvBNAct):
                idx = drop(block.expand.out_channels, 4)
                _silence(block.expand, idx)
                _silence(block.depthwise, idx)
                plan["expand"][i] -= 4
            else:   # the depthwise conv writes the channels of the group it reads
                _silence(block.depthwise, group_drops[k - 1])
            if plan["se"][i]:
                idx = drop(plan["se"][i], 2)
                block.se.fc1.weight.data[idx] = 0
                block.se.fc1.bias.data[idx] = 0
                plan["se"][i] -= 2
        _silence(model.last_conv, drop(model.last_conv.out_channels, 8))
        plan["last_conv"] -= 8
        if plan["head"]:
            idx = drop(plan["head"], 8)
            model.head[0].weight.data[idx] = 0
            model.head[0].bias.data[idx] = 0
            plan["head"] -= 8
    plan["stem"] -= 2
    for members in shortcut_groups(model.arch)[1:]:
        for i in members:
            plan["out"][i] -= 2
    cut = cut_to_plan(model, plan)
    x = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.allclose(cut(x), model(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in model.parameters())
    kept = torch.tensor([c for c in range(model.stem.out_channels) if c not in group_drops[0]])
    assert torch.equal(cut.stem.conv.weight, model.stem.conv.weight[kept])


def test_cut_refuses_to_widen():
    model = create_model("mobilenet_v2_035", num_classes=10)
    plan = plan_of(model.arch)
    plan["last_conv"] += 8
    with pytest.raises(MobileNetsError, match="only removes channels"):
        cut_to_plan(model, plan)


def test_planned_weights_load_export_and_predict(tmp_path):
    model = create_model("mobilenet_v3_small", width_mult=0.5, num_classes=10, in_chans=1,
                         small_input=True, resolution=28)
    plan = scale_plan(plan_of(model.arch), 0.5)
    cut = cut_to_plan(model, plan).eval()
    path = tmp_path / "planned.safetensors"
    save_weights(path, cut, {"classes": [str(i) for i in range(10)],
                             "preprocessing": {"resolution": 28, "in_chans": 1, "mean": [0.5], "std": [0.5]}})
    loaded, meta = load_model(path)
    assert meta["model_kwargs"]["channel_plan"]["out"] == plan["out"]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), cut(x), atol=1e-6)
    onnx = tmp_path / "planned.onnx"
    r = subprocess.run([sys.executable, "-m", "mobilenets", "export", str(path), "--format", "onnx",
                        "--out", str(onnx)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import mobilenets
    probs = mobilenets.Predictor(str(onnx))(torch.rand(28, 28))
    assert len(probs) > 0
    r = subprocess.run([sys.executable, "-m", "mobilenets", "profile", str(path), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and '"madds"' in r.stdout, r.stderr
