"""Latency tables: what a table file holds, how it prices a plan, and the one-line refusals
of a table from elsewhere or a damaged one."""
import json

import pytest
import torch

from mobilenets import create_model, profile
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.plan import plan_of, scale_plan
from mobilenets.analysis.search import latency
from mobilenets.analysis.search.latency import check_table, load_table, measure_table, predict, save_table

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_table(model, resolution, per_madd=1e-6):
    """A table whose every piece costs `per_madd` ms per multiply-add of its convolutions,
    squeeze-excite and linear layers, and nothing else."""
    pieces = latency._piece_specs(model, resolution)
    entries = {p["key"]: {"vars": p["vars"], "points": [], "coef": [0.0, per_madd, per_madd, per_madd, 0.0]}
               for p in pieces}
    return {"format": latency.TABLE_FORMAT, "engine": "eager", "threads": 1, "batch": 1,
            "resolution": resolution, "model": model.model_name, "model_kwargs": model.model_kwargs,
            "num_classes": model.classifier.out_features, "base_plan": plan_of(model.arch), "overhead_ms": 0.0,
            "pieces": [{"name": p["name"], "key": p["key"], "size": p["size"]} for p in pieces],
            "entries": entries, "machine": {"model_name": "x"}}


@pytest.mark.parametrize("name,kw", [("mobilenet_v2", {}), ("mobilenet_v3_small", {}),
                                     ("mobilenet_v1", {"small_input": True})])
def test_piece_costs_add_up_to_the_profilers_multiply_adds(name, kw):
    # With a cost of 1e-6 ms per multiply-add, a plan's price is the profiler's count (an
    # independent walk over the built model) for any plan.
    model = create_model(name, num_classes=7, **kw)
    table = synthetic_table(model, 64)
    plan = scale_plan(plan_of(model.arch), 0.6)
    planned = create_model(name, num_classes=7, channel_plan=plan, **kw)
    for p, m in ((plan_of(model.arch), model), (plan, planned)):
        assert predict(table, p, corrected=False) == pytest.approx(profile(m, 64)["madds"] * 1e-6, rel=1e-9)


@pytest.fixture(scope="module")
def eager_table(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2_035", num_classes=10, in_chans=1, small_input=True).eval()
    table = measure_table(model, "eager", threads=1, batch=1, resolution=16, runs=3, warmup=1, log=lambda *a: None)
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    save_table(table, path)
    return model, table, path


def test_table_records_machine_engine_and_every_piece(eager_table):
    model, table, path = eager_table
    t = load_table(path)
    assert t["engine"] == "eager" and t["threads"] == 1 and t["batch"] == 1 and t["resolution"] == 16
    assert t["machine"]["sgemm_gflops"] > 0 and t["machine"]["model_name"] is not None
    assert "torch" in t["versions"]
    assert [p["name"] for p in t["pieces"]] == ["stem"] + [f"blocks.{i}" for i in range(17)] + ["tail"]
    for p in t["pieces"]:
        entry = t["entries"][p["key"]]
        # the corners of the width box and its centre
        assert len(entry["points"]) == 2 ** len(entry["vars"]) + 1
    assert [f["scale"] for f in t["correction"]["fitted_on"]] == [1.0, 0.75, 0.5]
    assert predict(t, plan_of(model.arch)) > 0


def test_table_from_elsewhere_or_damaged_is_refused(eager_table, tmp_path):
    model, table, path = eager_table
    with pytest.raises(MobileNetsError, match=r"measured with eager on 1 thread\(s\).*asked for onnxruntime on 2"):
        check_table(table, path, "onnxruntime", 2, 1, model)
    other = create_model("mobilenet_v3_small", num_classes=10, in_chans=1, small_input=True)
    with pytest.raises(MobileNetsError, match="another network"):
        check_table(table, path, "eager", 1, 1, other)
    bad = tmp_path / "cut.json"
    bad.write_text(path.read_text()[:200])
    with pytest.raises(MobileNetsError, match="cut.json: not a readable latency table"):
        load_table(bad)
    damaged = json.loads(path.read_text())
    first = damaged["pieces"][0]["key"]
    damaged["entries"][first]["coef"] = ["fast"] * 5
    bad.write_text(json.dumps(damaged))
    with pytest.raises(MobileNetsError, match="damaged latency table"):
        load_table(bad)


def test_timing_at_one_thread_gives_pytorch_its_thread_count_back(tmp_path):
    model = create_model("mobilenet_v1_025", num_classes=4, small_input=True).eval()
    torch.set_num_threads(2)
    try:
        assert latency.measure_model(model, "eager", 1, 1, 16, tmp_path, runs=3, warmup=1, passes=2) > 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
