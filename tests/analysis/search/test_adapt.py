"""NetAdapt end to end on Fashion-MNIST with a multiply-add budget (deterministic: no timing):
the budget is met, an interrupted run resumes to the same result, two gloo ranks choose as one
process does, and bad targets get one line; a latency budget is met as measured, not as the
table predicts."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from mobilenets import create_model, load_model, profile
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.weights import save_weights
from mobilenets.analysis.search import adapt as adapt_module
from mobilenets.analysis.search.adapt import AdaptSettings, adapt

pytestmark = [pytest.mark.needs_fmnist, pytest.mark.usefixtures("one_thread")]
PREPROCESSING = {"resolution": 28, "resize": 28, "in_chans": 1, "mean": [0.2860], "std": [0.3530]}


def settings(base_madds):
    return AdaptSettings(target_madds=int(0.8 * base_madds), initial_reduction=0.1, reduction_decay=1.0,
                         short_steps=2, final_steps=2, batch_size=16, val_images=48, seed=0)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mobilenet_v1_025", num_classes=10, in_chans=1, small_input=True, resolution=28)
    path = tmp_path_factory.mktemp("start") / "v1.safetensors"
    save_weights(path, model, {"classes": [str(i) for i in range(10)], "preprocessing": PREPROCESSING})
    return path, profile(model, 28)["madds"]


@pytest.fixture(scope="module")
def single(start, tmp_path_factory):
    """The uninterrupted run, on one thread as the tests that compare with it (module fixtures
    are set up before the function-scoped `one_thread`)."""
    path, madds = start
    out = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = adapt(str(path), out, settings(madds), log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    return out, report


def history(out):
    return [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]


def test_budget_is_met_and_the_result_loads(start, single):
    _, base = start
    out, report = single
    adapted, meta = load_model(report["weights"])
    # The profiler, not adapt's own bookkeeping, says the budget holds.
    assert profile(adapted, 28)["madds"] <= 0.8 * base
    rows = history(out)
    assert [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:   # each iteration cut exactly one width position
        assert r["width"][1] < r["width"][0]
        assert sum(p["width"] is not None for p in r["proposals"]) >= 1
    assert report["test_images"] == 10000 and 0 <= report["test_top1"] <= 1
    assert (out / "adapt.png").stat().st_size > 0
    same = create_model("mobilenet_v1_025", pretrained=report["weights"], num_classes=10, in_chans=1,
                        small_input=True)
    assert sum(p.numel() for p in same.parameters()) == sum(p.numel() for p in adapted.parameters())


def test_interrupted_run_resumes_to_the_same_result(start, single, tmp_path, monkeypatch):
    path, madds = start
    out = tmp_path / "run"
    real, calls = adapt_module.short_finetune, [0]

    def interrupted(*a, **kw):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(adapt_module, "short_finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        adapt(str(path), out, settings(madds), log=lambda *a: None)
    monkeypatch.setattr(adapt_module, "short_finetune", real)
    report = adapt("", out, AdaptSettings(), resume=True, log=lambda *a: None)
    ref_out, ref = single
    assert history(out) == history(ref_out)
    a, _ = load_model(report["weights"])
    b, _ = load_model(ref["weights"])
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def _rank(rank, world, port, weights, out, madds):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    adapt(weights, out, settings(madds), log=lambda *a: None)


@pytest.mark.slow
def test_two_gloo_ranks_choose_as_one_process(start, single, tmp_path, monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    path, madds = start
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    mp.start_processes(_rank, args=(2, port, str(path), str(out), madds), nprocs=2, join=True,
                       start_method="spawn")
    ref_out, _ = single
    assert history(out) == history(ref_out)


def test_bad_targets_get_one_line(start, tmp_path):
    path, madds = start
    with pytest.raises(MobileNetsError, match="not below the model's current multiply-adds"):
        adapt(str(path), tmp_path / "a", AdaptSettings(target_madds=2 * madds), log=lambda *a: None)
    with pytest.raises(MobileNetsError, match="below anything reachable: the narrowest plan"):
        adapt(str(path), tmp_path / "floor", AdaptSettings(target_madds=1000), log=lambda *a: None)
    with pytest.raises(MobileNetsError, match="exactly one of"):
        adapt(str(path), tmp_path / "b", AdaptSettings(), log=lambda *a: None)
    r = subprocess.run([sys.executable, "-m", "mobilenets", "adapt", str(path), "--target-latency-ratio", "1.5",
                        "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "0 < ratio < 1" in r.stderr
    table = tmp_path / "lut.json"
    table.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "mobilenets", "adapt", str(path), "--target-latency-ratio", "0.5",
                        "--table", str(table), "--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert r.returncode == 2 and "lut.json: not a readable latency table" in r.stderr, r.stderr


def test_a_cut_that_no_position_reaches_is_halved_the_last_one_included():
    from mobilenets.analysis.search.adapt import iteration_target
    floor = 0.70                      # nothing can go below it in one step

    def widths_for(target):
        return [8 if target >= floor else None, None]
    # 1.0 less 0.4 is below the floor, less 0.2 is not: 0.8
    assert iteration_target(1.0, 0.4, 0.0, widths_for) == (pytest.approx(0.8), [8, None])
    # The budget caps the cut (1.0 → 0.5), and it is the capped cut of 0.5 that is halved: 0.25 → 0.75.
    assert iteration_target(1.0, 0.8, 0.5, widths_for)[0] == pytest.approx(0.75)
    # A reachable cut is taken as it is, down to the budget and not below it.
    assert iteration_target(0.8, 0.5, 0.72, widths_for)[0] == pytest.approx(0.72)
    # Never reachable: after the halvings, the last target tried and no widths.
    assert iteration_target(0.71, 0.3, 0.0, widths_for, halvings=3)[1] == [None, None]


def test_a_latency_budget_is_met_as_measured_not_as_the_table_predicts(start, tmp_path, monkeypatch):
    """The table prices widths in multiply-adds (1e-6 ms each); the "engine" is 1.5× slower per
    multiply-add plus a constant 0.05 ms. Run to 0.7× of the measured start, adapt must stop at
    the first iteration whose measured latency is within budget, whatever the table says."""
    from mobilenets.analysis.search.latency import madds_table
    path, madds = start

    def engine_ms(model, *_):
        return 1.5e-6 * profile(model, 28)["madds"] + 0.05
    # The machine runs 1.0×, 1.5×, 1.0×, ... as fast as it did in each timing: measured beside
    # the start model, the verdict must not change with it.
    spells = iter([1.0, 1.5] * 100)
    monkeypatch.setattr(adapt_module, "_table", lambda model, *a: madds_table(model, 28))
    monkeypatch.setattr(adapt_module, "measure_models",
                        lambda models, *a, **k: (lambda f: [f * engine_ms(m) for m in models])(next(spells)))
    s = AdaptSettings(target_latency_ratio=0.7, initial_reduction=0.1, reduction_decay=1.0,
                      short_steps=2, final_steps=2, batch_size=16, val_images=48, seed=0)
    report = adapt(str(path), tmp_path / "run", s, log=lambda *a: None)
    start_ms = 1.5e-6 * madds + 0.05
    assert report["target"] == pytest.approx(0.7 * start_ms)
    adapted, _ = load_model(report["weights"])
    assert engine_ms(adapted) <= 0.7 * start_ms
    rows = history(tmp_path / "run")
    assert all(r["measured_ms"] > 0.7 * start_ms for r in rows[:-1])
    # The table alone (1e-6 ms per multiply-add) would have called the budget met earlier.
    table_met = [r["iteration"] for r in rows if r["cost"] - r["table_miss"] <= 0.7 * start_ms]
    assert table_met and table_met[0] < rows[-1]["iteration"]
