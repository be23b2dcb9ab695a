import json
import os
import subprocess
import sys

import pytest
import torch

from mobilenets.models import mobilenet as models
from mobilenets.analysis.ablate import (ABLATIONS, Schedule, _madds, arm_configs, match_width, run_ablations,
                                        upgrade_weights, verdict, write_report)
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.models.mobilenet import create_model, load_model, mobilenet
from mobilenets.models.weights import load_state_into, load_weights, save_weights
from v2_counts import v2_counts


@pytest.mark.slow
def test_other_families_match_the_base_multiply_adds():
    target = _madds("mobilenet_v2", 0.5)
    for family in ("mobilenet_v1", "mobilenet_v3_small"):
        w = match_width(family, target)
        # Widths are multiples of 8, so MAdds move in steps: V3-Small's jumps 3.5% between
        # α 1.24 and 1.25 (every layer gains 8 channels), so the nearest width can be 1.8% off.
        assert abs(_madds(family, w) - target) / target < 0.018, (family, w)
        # No neighbouring width on the 0.01 grid is closer.
        for other in (w - 0.01, w + 0.01):
            assert abs(_madds(family, other) - target) >= abs(_madds(family, w) - target)


def test_shared_arms_are_trained_once():
    configs = arm_configs()
    # 2 + 3 + 4 + 3 arms; the published V2 appears in all four ablations.
    assert sum(len(a.arms) for a in ABLATIONS) == 12
    assert len(configs) == 9
    assert configs["mobilenet_v2"] == {"family": "mobilenet_v2", "width_mult": 0.5, "options": {}}


class FakeTrainer:
    """Accuracy = fixed per configuration + seed noise; counts calls."""

    def __init__(self, accuracy):
        self.accuracy, self.calls = accuracy, []

    def __call__(self, key, config, seed, schedule, run_dir, data_dir, progress):
        self.calls.append((key, seed))
        return {"key": key, "seed": seed, "schedule": schedule.__dict__,
                "top1": self.accuracy[key] + 0.001 * seed, "madds": 1, "params": 1,
                "width_mult": config["width_mult"], "train_seconds": 0.0}


def test_summary_verdicts_and_resume(tmp_path):
    acc = {"mobilenet_v2": 0.90, "mobilenet_v2-proj_act=relu6": 0.85,
           "mobilenet_v2-shortcut=expansion": 0.92, "mobilenet_v2-shortcut=none": 0.80}
    fake = FakeTrainer(acc)
    sched = Schedule(epochs=1, batch_size=8, limit_train=16, limit_test=16)
    s = run_ablations(tmp_path, 3, sched, ["projection", "shortcut"], progress=False, train_fn=fake)
    assert len(fake.calls) == 4 * 3
    proj, short = s["ablations"]
    linear = proj["arms"][0]
    assert linear["top1_mean"] == pytest.approx(0.901) and linear["top1_std"] == pytest.approx(0.001)
    assert proj["held"] and proj["clear"]
    assert not short["held"]  # expansion beat bottleneck in these numbers
    # Results are kept: the same command again trains nothing; a new seed trains only it.
    again = FakeTrainer(acc)
    run_ablations(tmp_path, 4, sched, ["projection", "shortcut"], progress=False, train_fn=again)
    assert sorted(again.calls) == sorted((k, 3) for k in acc)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 16 and json.loads(lines[0])["seed"] == 0

    docs, chart = write_report(s, tmp_path / "docs" / "ablations.md", "mobilenets ablate --seeds 3")
    text = docs.read_text()
    assert "mobilenets ablate --seeds 3" in text and "(ablations.png)" in text
    assert "| projection | linear | 0.5 |" in text and "90.10 ± 0.10" in text
    assert "3 seeds per arm" in text and "The 12 runs trained for" in text
    assert f"`{tmp_path}/runs/<schedule>/<arm>-seed<k>/best.safetensors`" in text
    assert ("Here: yes, clearly (linear 90.10 ± 0.10% vs ReLU6 85.10 ± 0.10%); every gap is larger "
            "than one standard deviation.") in text
    assert ("Here: no, bottleneck did not beat expansion (90.10 ± 0.10% vs 92.10 ± 0.10%). The gap "
            "is larger than one standard deviation: on this data the order is reversed. The rest held: "
            "bottleneck beat none.") in text
    assert chart.stat().st_size > 0
    kept = json.loads(docs.with_suffix(".json").read_text())
    assert kept["command"] == "mobilenets ablate --seeds 3"
    linear_kept = kept["ablations"][0]["arms"][0]
    assert linear_kept["label"] == "linear" and sorted(linear_kept["top1"]) == pytest.approx([0.9, 0.901, 0.902])


def arms(**top1):
    """An ablation summary entry from label=(mean, std) pairs, the ordering as given."""
    labels = list(top1)
    ab = {"arms": [{"label": k, "top1_mean": m, "top1_std": sd} for k, (m, sd) in top1.items()],
          "better": [[labels[0], other] for other in labels[1:]]}
    by = {a["label"]: a for a in ab["arms"]}
    ab["held"] = all(by[w]["top1_mean"] > by[l]["top1_mean"] for w, l in ab["better"])
    ab["clear"] = False
    return ab


@pytest.mark.parametrize("ab, says", [
    (arms(a=(0.91, 0.01), b=(0.90, 0.02)),
     "only in the means (a 91.00 ± 1.00% vs b 90.00 ± 2.00%); a vs b is within one standard"),
    (arms(a=(0.90, 0.01), b=(0.905, 0.01)),
     "no, a did not beat b (90.00 ± 1.00% vs 90.50 ± 1.00%). But the gap is within one standard"),
    (arms(a=(0.90, 0.001), b=(0.91, 0.001), c=(0.905, 0.01), d=(0.80, 0.01)),
     "no, a did not beat b (90.00 ± 0.10% vs 91.00 ± 0.10%); a did not beat c (90.00 ± 0.10% vs "
     "90.50 ± 1.00%). At least one of these gaps is larger than one standard deviation: on this data "
     "the order is partly reversed. The rest held: a beat d"),
    (arms(a=(0.90, None), b=(0.80, None)), "yes in the means (a 90.00% vs b 80.00%), but one seed"),
    (arms(a=(0.80, None), b=(0.90, None), c=(0.70, None)),
     "no, a did not beat b (80.00% vs 90.00%). With one seed"),
])
def test_verdict_says_whether_the_gap_beats_the_noise(ab, says):
    assert verdict(ab).startswith(says)


def test_weights_from_registered_variants_are_upgraded(tmp_path, monkeypatch, one_thread):
    """Before arms were a family plus options, each was registered as "ablation:<key>" in the
    training process: such weights are rewritten to load anywhere, tensors untouched."""
    key, sched = "mobilenet_v2-proj_act=relu6", Schedule(1, 8, 16, 16)
    name = f"ablation:{key}"
    monkeypatch.setitem(models._REGISTRY, name, (mobilenet, {"family": "mobilenet_v2", "proj_act": "relu6"}))
    old = create_model(name, width_mult=0.5, small_input=True, in_chans=1, num_classes=10).eval()
    path = tmp_path / "runs" / sched.tag() / f"{key}-seed0" / "best.safetensors"
    path.parent.mkdir(parents=True)
    save_weights(path, old, {"top1": 0.5})
    monkeypatch.delitem(models._REGISTRY, name)   # a fresh process knows no such name
    with pytest.raises(MobileNetsError, match="unknown model 'ablation:"):
        load_model(path)
    earlier = FakeTrainer({key: 0.8})(key, {"width_mult": 0.5}, 0, sched, None, None, False)
    (tmp_path / "results.jsonl").write_text(json.dumps(earlier) + "\n")
    fake = FakeTrainer({"mobilenet_v2": 0.9})
    run_ablations(tmp_path, 1, sched, ["projection"], progress=False, train_fn=fake)
    assert fake.calls == [("mobilenet_v2", 0)]   # the finished arm is not trained again
    model, meta = load_model(path)
    assert meta["model"] == "mobilenet_v2" and meta["top1"] == 0.5
    assert meta["model_kwargs"] == {"proj_act": "relu6", "width_mult": 0.5, "small_input": True,
                                    "in_chans": 1, "num_classes": 10}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), old(x))
    assert upgrade_weights(path, {}) is False   # already upgraded: left alone


def test_single_seed_has_no_spread(tmp_path):
    fake = FakeTrainer({"mobilenet_v2": 0.9, "mobilenet_v2-proj_act=relu6": 0.8})
    s = run_ablations(tmp_path, 1, Schedule(), ["projection"], progress=False, train_fn=fake)
    arm = s["ablations"][0]["arms"][0]
    assert arm["top1_std"] is None and s["ablations"][0]["held"] and not s["ablations"][0]["clear"]
    json.dumps(s, allow_nan=False)  # the --json output is strict JSON


@pytest.mark.parametrize("kw,match", [
    ({"seeds": 0}, "seeds=0"), ({"only": ["depth"]}, "unknown ablation 'depth'"),
    ({"schedule": Schedule(limit_train=10, batch_size=64)}, "limit_train=10 is smaller"),
    ({"schedule": Schedule(epochs=0)}, "epochs=0")])
def test_bad_input(tmp_path, kw, match):
    with pytest.raises(MobileNetsError, match=match):
        run_ablations(tmp_path, **{"seeds": 1, **kw}, progress=False, train_fn=None)


def test_corrupt_results_file(tmp_path):
    (tmp_path / "results.jsonl").write_text("not json\n")
    with pytest.raises(MobileNetsError, match="results.jsonl:1: not a results record"):
        run_ablations(tmp_path, 1, Schedule(), ["projection"], progress=False, train_fn=None)


@pytest.fixture(scope="module")
def projection_run(tmp_path_factory):
    """The projection ablation for real on 64 Fashion-MNIST images, one seed."""
    tmp = tmp_path_factory.mktemp("ablate")
    out, docs = tmp / "abl", tmp / "docs" / "ablations.md"
    argv = ["ablate", "--seeds", "1", "--epochs", "1", "--batch-size", "32", "--limit-train", "64",
            "--limit-test", "64", "--only", "projection", "--out", str(out), "--docs", str(docs), "--json"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out, docs, Schedule(1, 32, 64, 64)


@pytest.mark.slow
@pytest.mark.needs_fmnist
def test_real_training_on_fashion_mnist(projection_run):
    out, docs, _ = projection_run
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in recs] == ["mobilenet_v2", "mobilenet_v2-proj_act=relu6"]
    # V2 Table 2 at α 0.5, 28 px, one channel in, 10 classes, small input (tests/v2_counts.py)
    madds = v2_counts(0.5, 28, 1, 10, small_input=True)[1]
    assert all(0 <= r["top1"] <= 1 and r["madds"] == madds for r in recs)
    assert "mobilenets ablate --data fashion-mnist --seeds 1" in docs.read_text()


RELOAD = """
import sys, torch
from mobilenets.models.mobilenet import load_model
model, meta = load_model(sys.argv[1])
torch.save(model.eval()(torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.mark.slow
@pytest.mark.needs_fmnist
def test_arm_weights_reload_in_a_fresh_process(projection_run, tmp_path, one_thread):
    out, _, schedule = projection_run
    path = out / "runs" / schedule.tag() / "mobilenet_v2-proj_act=relu6-seed0" / "best.safetensors"
    state, meta = load_weights(path)
    # A base model name and the arm's options, nothing registered only in the training process.
    assert meta["model"] == "mobilenet_v2"
    assert meta["model_kwargs"] == {"proj_act": "relu6", "num_classes": 10, "in_chans": 1,
                                    "width_mult": 0.5, "small_input": True}
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    r = subprocess.run([sys.executable, "-c", RELOAD, str(path), str(tmp_path / "x.pt"),
                        str(tmp_path / "logits.pt")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    fresh = torch.load(tmp_path / "logits.pt")

    def logits(**options):
        model = create_model("mobilenet_v2", width_mult=0.5, small_input=True, in_chans=1,
                             num_classes=10, **options)
        load_state_into(model, state, str(path))
        with torch.no_grad():
            return model.eval()(x)

    assert torch.equal(fresh, logits(proj_act="relu6"))
    # The option matters: the same tensors in the default (linear) model compute other logits,
    # so a file that dropped it would load without error and be wrong.
    assert (fresh - logits()).abs().max() > 1e-3


def test_clearly_means_more_than_one_std_of_each_arm():
    from mobilenets.analysis.ablate import clearly_apart
    assert clearly_apart(0.02, 0.01, 0.015) and clearly_apart(-0.02, 0.01, 0.015)
    assert not clearly_apart(0.015, 0.01, 0.015)       # not more than the larger deviation
    assert not clearly_apart(0.5, None, 0.01)           # one seed: no spread to judge by


def test_expansion_order_is_named_our_expectation(tmp_path):
    # V2 §3.4 only says t = 5 to 10 give nearly identical curves; the 1 → 6 order is ours.
    acc = {"mobilenet_v2-expand_ratio=1": 0.80, "mobilenet_v2-expand_ratio=2": 0.82,
           "mobilenet_v2-expand_ratio=4": 0.84, "mobilenet_v2": 0.86}
    sched = Schedule(epochs=1, batch_size=8, limit_train=16, limit_test=16)
    s = run_ablations(tmp_path, 2, sched, ["expansion"], progress=False, train_fn=FakeTrainer(acc))
    text = write_report(s, tmp_path / "ablations.md", "mobilenets ablate")[0].read_text()
    assert "**Expansion ratio t** — our expectation, not the paper's: accuracy rises" in text
    assert "t = 5 to 10 give nearly identical performance curves" in text
