import json

import pytest

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.mobilenet import create_model
from mobilenets.analysis.tradeoff import fit, measure_latency, tradeoff_grid
from mobilenets.models.weights import save_weights

# MobileNets (2017) Tables 6 and 7: (α, ρ) → millions of MAdds.
V1_PAPER_MADDS = {(1.0, 224): 569, (0.75, 224): 325, (0.5, 224): 149, (0.25, 224): 41,
                  (1.0, 192): 418, (1.0, 160): 290, (1.0, 128): 186}


def test_grid_reproduces_v1_tables_6_and_7():
    rows = tradeoff_grid("mobilenet_v1", [0.25, 0.5, 0.75, 1.0], [128, 160, 192, 224], latency=False)
    assert len(rows) == 16
    got = {(r["width_mult"], r["resolution"]): r["madds"] / 1e6 for r in rows}
    for key, paper in V1_PAPER_MADDS.items():
        assert abs(got[key] - paper) < 1, (key, got[key], paper)  # the paper truncates or rounds
    # Params do not depend on ρ; MAdds grow with both α and ρ.
    by_w = {}
    for r in rows:
        by_w.setdefault(r["width_mult"], set()).add(r["params"])
        assert r["latency_ms"] is None and r["top1"] is None
    assert all(len(p) == 1 for p in by_w.values())


def test_latency_is_measured():
    model = create_model("mobilenet_v2", width_mult=0.35, small_input=True)
    assert measure_latency(model, 32, repeats=2, warmup=1) > 0
    rows = tradeoff_grid("mobilenet_v2", [0.35], [32], repeats=2, model_kwargs={"small_input": True})
    assert rows[0]["latency_ms"] > 0


def test_thread_count_is_restored():
    import torch
    before = torch.get_num_threads()
    model = create_model("mobilenet_v2", width_mult=0.35, small_input=True)
    assert measure_latency(model, 32, repeats=1, warmup=0, threads=1) > 0
    assert torch.get_num_threads() == before
    with pytest.raises(MobileNetsError, match="threads=0"):
        measure_latency(model, 32, threads=0)


def test_empty_grid():
    with pytest.raises(MobileNetsError, match="empty grid"):
        tradeoff_grid("mobilenet_v2", [], [96])
    with pytest.raises(MobileNetsError, match="unknown family"):
        tradeoff_grid("resnet", [1.0], [96])


def test_fit_picks_most_madds_within_budget():
    best = fit("mobilenet_v1", {"max_madds": 150e6, "max_params": 2e6}, [0.25, 0.5, 0.75, 1.0],
               [128, 160, 192, 224], alternatives=3)
    assert (best["width_mult"], best["resolution"]) == (0.5, 224)  # 149.5M, 1.3M params
    chain = [best, *best["alternatives"]]
    assert len(chain) == 4
    assert [r["madds"] for r in chain] == sorted((r["madds"] for r in chain), reverse=True)
    assert all(r["madds"] <= 150e6 and r["params"] <= 2e6 for r in chain)


def test_fit_measures_latency_only_when_asked():
    best = fit("mobilenet_v2", {"max_latency_ms": 1e5}, [0.35, 0.5], [32], repeats=1,
               alternatives=1, model_kwargs={"small_input": True})
    assert best["width_mult"] == 0.5 and best["latency_ms"] > 0
    assert best["alternatives"][0]["latency_ms"] > 0


def test_budget_nothing_fits_names_the_constraint():
    with pytest.raises(MobileNetsError) as e:
        fit("mobilenet_v2", {"max_madds": 1e6, "max_params": 1e9}, [0.35, 1.0], [96, 128])
    msg = str(e.value)
    assert "\n" not in msg
    assert "α=0.35 at 96 px" in msg and "--max-madds" in msg and "11.93× over" in msg


@pytest.mark.parametrize("budgets", [{"max_madds": 0}, {"max_speed": 3}])
def test_bad_budget(budgets):
    with pytest.raises(MobileNetsError):
        fit("mobilenet_v2", budgets, [1.0], [96])


def _checkpoint(path, width, resolution, top1):
    model = create_model("mobilenet_v2", width_mult=width, num_classes=10, in_chans=1,
                         small_input=True)
    save_weights(path, model, {"top1": top1, "preprocessing": {"resolution": resolution}})
    return str(path)


def test_checkpoints_fill_accuracy_and_rank_fit(tmp_path):
    small = _checkpoint(tmp_path / "a.safetensors", 0.35, 32, 0.91)
    big = _checkpoint(tmp_path / "b.safetensors", 0.5, 32, 0.89)
    kw = {"small_input": True, "num_classes": 10, "in_chans": 1}
    rows = tradeoff_grid("mobilenet_v2", [0.35, 0.5], [32, 40], latency=False,
                         checkpoints=[small, big], model_kwargs=kw)
    acc = {(r["width_mult"], r["resolution"]): r["top1"] for r in rows}
    assert acc == {(0.35, 32): 0.91, (0.5, 32): 0.89, (0.35, 40): None, (0.5, 40): None}
    best = fit("mobilenet_v2", {"max_madds": 1e9}, [0.35, 0.5], [32], checkpoints=[small, big],
               model_kwargs=kw)
    assert best["ranked_by"] == "top1" and best["width_mult"] == 0.35  # higher top-1, fewer MAdds
    assert [r["width_mult"] for r in best["alternatives"]] == [0.5]


def test_checkpoint_without_accuracy(tmp_path):
    path = tmp_path / "c.safetensors"
    save_weights(path, create_model("mobilenet_v2", width_mult=0.35), {})
    with pytest.raises(MobileNetsError, match="no top1"):
        tradeoff_grid("mobilenet_v2", [0.35], [96], latency=False, checkpoints=[path])


def test_cli_fit_json_and_tradeoff_plot(capsys, tmp_path):
    assert main(["fit", "--family", "mobilenet_v1", "--max-madds", "150e6", "--widths", "0.25",
                 "0.5", "--resolutions", "128", "224", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"model", "width_mult", "resolution", "madds", "params", "alternatives"} <= set(r)
    assert r["model"] == "mobilenet_v1" and r["width_mult"] == 0.5 and r["resolution"] == 224
    out = tmp_path / "t.png"
    assert main(["tradeoff", "--family", "mobilenet_v1", "--widths", "0.25", "0.5",
                 "--resolutions", "128", "160", "--no-latency", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["fit", "--family", "mobilenet_v1"]) == 2
    assert "no budget given" in capsys.readouterr().err


def test_deployment_backends_are_checked():
    from mobilenets.analysis.tradeoff import deployment_available
    with pytest.raises(MobileNetsError, match="backend 'tflite' is not one of onnxruntime, int8"):
        tradeoff_grid("mobilenet_v2", [0.35], [96], backends=["tflite"])
    if not deployment_available():
        with pytest.raises(MobileNetsError, match="need ONNX Runtime"):
            tradeoff_grid("mobilenet_v2", [0.35], [96], backends=["int8"])


def test_int8_and_onnxruntime_latency_when_deployment_is_installed():
    from mobilenets.analysis.tradeoff import deployment_available
    if not deployment_available():
        pytest.skip("ONNX Runtime (the deploy extra) is not installed")
    rows = tradeoff_grid("mobilenet_v2", [0.35], [32], repeats=2, model_kwargs={"small_input": True},
                         backends=["int8"])
    assert rows[0]["latency_ms_int8"] > 0 and rows[0]["latency_ms"] > 0


def test_checkpoint_options_set_the_grid(tmp_path):
    ckpt = _checkpoint(tmp_path / "a.safetensors", 0.35, 32, 0.9)
    rows = tradeoff_grid("mobilenet_v2", checkpoints=[ckpt], latency=False)
    # Only the checkpoint's configuration, costed as the 10-class, 1-channel, stride-8 network.
    assert [(r["width_mult"], r["resolution"]) for r in rows] == [(0.35, 32)]
    small = create_model("mobilenet_v2", width_mult=0.35, num_classes=10, in_chans=1, small_input=True)
    from mobilenets.models.profile import profile
    assert rows[0]["madds"] == profile(small, 32)["madds"]
    with pytest.raises(MobileNetsError, match="was built with minimalistic=False"):
        tradeoff_grid("mobilenet_v2", checkpoints=[ckpt], latency=False,
                      model_kwargs={"minimalistic": True})


def test_memory_budget_is_the_papers_table3_figure():
    # V2 1.0 at 224 needs the paper's "400K" (16 ch × 112² × 2 B = 401,408 B); 1.4 at 192 needs
    # 24 ch × 96² × 2 B = 442K and is excluded although it has more MAdds.
    best = fit("mobilenet_v2", {"max_memory_kb": 410}, [1.0, 1.4], [192, 224], alternatives=1)
    assert (best["width_mult"], best["resolution"]) == (1.0, 224)
    assert best["memory_table3_bytes_fp16"] == 401_408
    assert (best["alternatives"][0]["width_mult"], best["alternatives"][0]["resolution"]) == (1.0, 192)


def test_accuracy_inversions_in_the_reference_tables():
    from mobilenets.analysis.tradeoff import accuracy_inversions
    from mobilenets.models.tables import V1_CHECKPOINTS, V2_CHECKPOINTS
    # Read off TF-slim's tables by hand: (α, ρ) of the cheaper, more accurate checkpoint first.
    assert set(accuracy_inversions(V1_CHECKPOINTS)) == {
        ((0.75, 128), (0.5, 192)),       # 104M 62.1% vs 110M 61.7%
        ((0.75, 160), (1.0, 128)),       # 162M 65.3% vs 186M 65.2%
    }
    assert set(accuracy_inversions(V2_CHECKPOINTS)) == {
        ((0.5, 96), (0.35, 128)),        # 18M 51.2% vs 20M 50.8%
        ((0.75, 96), (0.35, 192)),       # 39M 58.8% vs 43M 58.2%
        ((0.5, 160), (1.0, 96)),         # 50M 61.0% vs 56M 60.3%
        ((0.5, 160), (0.35, 224)),       # 50M 61.0% vs 59M 60.3%
        ((0.5, 224), (1.0, 128)),        # 97M 65.4% vs 99M 65.3%
    }
    assert accuracy_inversions({"a": (1, 2.0), "b": (2, 2.0), "c": (3, 1.0)}) == [("a", "c"), ("b", "c")]
