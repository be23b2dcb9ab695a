import json

import pytest

from mobilenets import MobileNetsError
from mobilenets.deploy.bench import cpu_peak, run_bench
from mobilenets.cli import main

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
cpu MHz\t\t: 2596.098
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni
processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
cpu MHz\t\t: 2596.098
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni
"""


def test_peak_from_cpuinfo():
    # Zen 4 double-pumps AVX-512 on two 256-bit FMA pipes: 32 fp32 FLOP per cycle per core.
    p = cpu_peak(ZEN4, cores=2)
    assert p["flops_per_cycle"] == 32
    assert p["gflops"] == pytest.approx(2 * 2.596098 * 32)   # 166.2
    zen5 = cpu_peak(ZEN4.replace("family\t: 25", "family\t: 26"), cores=2)
    assert zen5["flops_per_cycle"] == 64
    avx2 = cpu_peak(ZEN4.replace("AuthenticAMD", "GenuineIntel").replace(" avx512f", ""), cores=4)
    assert avx2["flops_per_cycle"] == 32 and avx2["gflops"] == pytest.approx(4 * 2.596098 * 32)


@pytest.mark.slow
@pytest.mark.needs_fmnist
def test_bench_json_contract(capsys):
    rc = main(["bench", "mobilenet_v2_035", "--resolution", "64", "--batch", "1", "2",
               "--backends", "eager,onnxruntime", "--repeats", "3", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("eager", 1), ("eager", 2), ("onnxruntime", 1), ("onnxruntime", 2)]
    peak = cpu_peak()["gflops"]
    for r in rows:
        assert set(r) == {"backend", "precision", "batch", "median_ms", "images_per_s",
                          "gflops_per_s", "peak_fraction"}
        assert r["precision"] == "fp32" and r["median_ms"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_ms"] * 1e3, rel=5e-3)  # median_ms is rounded to µs
        assert r["peak_fraction"] == pytest.approx(r["gflops_per_s"] / peak, abs=1e-3)


def test_bench_rejects_unknown_backends():
    with pytest.raises(MobileNetsError, match="--backends tpu: allowed: eager, compiled, onnxruntime, int8"):
        run_bench("mobilenet_v2_035", backends=("tpu",))


@pytest.mark.parametrize("name,kwargs,timm_name", [
    ("mobilenet_v4_conv_small", {}, "mobilenetv4_conv_small"),
    ("mobilenet_v2", {"width_mult": 0.5}, "mobilenetv2_050"),
    ("mobilenet_v3_large", {}, "mobilenetv3_large_100"),
])
def test_timm_peer_is_the_same_network(name, kwargs, timm_name):
    """`--vs timm` races timm's build of the architecture: same parameter count as ours."""
    import torch
    from mobilenets import create_model
    from mobilenets.deploy.bench import _peer_model
    pytest.importorskip("timm")
    with torch.device("meta"):
        ours = create_model(name, **kwargs)
        theirs = _peer_model("timm", ours)
    assert theirs.default_cfg["architecture"] == timm_name
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())


def test_no_peer_for_small_input_or_unknown_library():
    import torch
    from mobilenets import create_model
    from mobilenets.deploy.bench import _peer_model
    with torch.device("meta"):
        small = create_model("mobilenet_v2", width_mult=0.35, small_input=True, in_chans=1, num_classes=10)
    assert _peer_model("timm", small) is None and _peer_model("torchvision", small) is None
    with pytest.raises(MobileNetsError, match="--vs 'keras' is not one of torchvision, timm"):
        _peer_model("keras", small)


def test_contenders_take_turns():
    import time
    from mobilenets.deploy.bench import time_in_turns
    order, stamps = [], []
    calls = [lambda i=i: (order.append(i), stamps.append(time.perf_counter())) for i in range(3)]
    times = time_in_turns(calls, runs=7, budget_s=float("inf"), rounds=3, settle_s=0.05, warmup=1)
    assert [len(t) for t in times] == [7, 7, 7]
    # 7 runs in 3 rounds: 3, 2, 2 timed calls per contender per round after 1 untimed one, each
    # contender's block in turn
    assert order == [0] * 4 + [1] * 4 + [2] * 4 + ([0] * 3 + [1] * 3 + [2] * 3) * 2
    # every turn starts after the idle pause: a gap of at least settle_s before each new block
    starts = [k for k in range(1, len(order)) if order[k] != order[k - 1]]
    assert len(starts) == 8 and all(stamps[k] - stamps[k - 1] >= 0.05 for k in starts)


def test_peer_graph_carries_biases_like_ours(tmp_path):
    """A random-init peer folds its BN into bias-free convolutions, a lighter ONNX graph than
    any trained model's; calibrated like ours, every convolution of its graph has a bias."""
    import onnx
    import torch
    from mobilenets import create_model
    from mobilenets.deploy.bench import _peer_contenders
    pytest.importorskip("timm")
    ours = create_model("mobilenet_v2", width_mult=0.35).eval()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _peer_contenders("timm", ours, 32, tmp_path, 1, images)
    convs = [n for n in onnx.load(tmp_path / "timm.onnx").graph.node if n.op_type == "Conv"]
    assert convs and all(len(n.input) == 3 for n in convs)
