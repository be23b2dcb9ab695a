"""benchmarks/batch_throughput.py: it times the model the trainer builds from the recipe, splits
a step's time into kinds that cover it, and reports its speed against the SGEMM of the same run."""
import json
from pathlib import Path

import pytest

from test_accuracy import load_benchmark

SCRIPT = load_benchmark("batch_throughput")
COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "accuracy" / "fashion-mnist-best.json"


def test_the_recipe_model_is_the_one_the_trainer_built():
    # The committed run's report was written by the trainer, a separate path from the benchmark's.
    report = json.loads(COMMITTED.read_text())["report"]
    model, cfg = SCRIPT.recipe_model(SCRIPT.load_recipe("fashion-mnist-best"), num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == report["params"]
    assert SCRIPT.profile(model, cfg["resolution"])["madds"] == report["madds"]


def test_unknown_ops_are_other():
    assert SCRIPT.op_kind("aten::native_batch_norm_backward") == "batch norm backward"
    assert SCRIPT.op_kind("aten::some_new_op") == "other"


def test_a_tiny_sweep_writes_rates_shares_and_a_split(tmp_path):
    out = tmp_path / "bt.json"
    assert SCRIPT.main(["--recipe", "fashion-mnist", "--batches", "2,4", "--rounds", "2",
                        "--images", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["batch"] for row in result["batches"]] == [2, 4]
    sgemm = sorted([result["machine"]["sgemm_gflops"], result["sgemm_gflops_after"]])
    for row in result["batches"]:
        assert len(row["rounds"]) == 2 and min(row["rounds"]) <= row["img_per_s"] <= max(row["rounds"])
        # Training FLOPs per image: 2 per multiply-add forward, twice the forward's backward.
        flops = 6 * result["madds"] * row["img_per_s"]
        assert abs(row["share_of_sgemm"] - flops / 1e9 / (sum(sgemm) / 2)) < 1e-3
        split = row["self_time_split"]
        assert abs(sum(split.values()) - 1) < 1e-3
        for kind in ("conv and linear forward", "conv and linear backward", "batch norm forward",
                     "batch norm backward", "activation forward", "activation backward"):
            assert split[kind] > 0, kind


def test_a_detection_recipe_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        SCRIPT.main(["--recipe", "detection"])
    assert stop.value.code == 2 and "detection recipe" in capsys.readouterr().err
