"""benchmarks/accuracy.py summarises a real (tiny) Fashion-MNIST run: its test re-scoring agrees
with the score the trainer recorded at the end of the run, and the summary names the machine."""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from mobilenets.cli import main

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_harness():
    return load_benchmark("accuracy")


@pytest.mark.slow
@pytest.mark.needs_fmnist
def test_collect_summarises_a_finished_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "--data", "fashion-mnist", "--epochs", "1", "--seed", "3", "--out", str(run),
                 "--set", "limit_train=512", "--val-fraction", "128"]) == 0
    harness = load_harness()
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    assert harness.main(["fashion-mnist", "--collect", str(run), "--threads", "1"]) == 0
    summary = json.loads((tmp_path / "results" / "fashion-mnist.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert summary["test"]["plain"]["top1"] == pytest.approx(report["test_top1"], abs=1e-6)
    assert summary["test"]["plain"]["images"] == report["test_images"] == 10_000
    assert 0 <= summary["test"]["flip"]["top1"] <= 1
    assert summary["report"]["selection"] == "best val_top1" and summary["report"]["val_images"] == 128
    assert summary["weights_sha256"] == hashlib.sha256((run / "best.safetensors").read_bytes()).hexdigest()
    assert summary["machine_described_at"] == "collection" and summary["machine"]["sgemm_gflops"] > 0
    assert len(summary["epochs"]) == 1



@pytest.mark.slow
@pytest.mark.needs_fmnist
@pytest.mark.usefixtures("one_thread")
def test_collect_summarises_a_segmentation_run(tmp_path, monkeypatch, scenes):
    """A segmenter's summary: the scene set's val split, scored once by the run and again by
    `mobilenets eval`, with 4 training scenes held out to choose the epoch."""
    run, data = tmp_path / "run", str(scenes / "voc")
    assert main(["train", "--model", "deeplabv3_mobilenet_v2", "--data", data, "--out", str(run), "--epochs", "1",
                 "--batch-size", "4", "--set", "resolution=64", "--set", "width_mult=0.35",
                 "--set", "channels_last=false", "--set", "val_fraction=4"]) == 0
    harness = load_harness()
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(harness.EXPERIMENTS, "segmentation",
                        (["--task", "segmentation", "--data", data, "--recipe", "segmentation"], "a tiny run"))
    assert harness.main(["segmentation", "--collect", str(run), "--threads", "1"]) == 0
    summary = json.loads((tmp_path / "results" / "segmentation.json").read_text())
    report = json.loads((run / "report.json").read_text())
    plain, flip = summary["test"]["plain"], summary["test"]["flip"]
    # `eval` scores in batches of 16, the trainer in 4: a pixel or two may fall the other way.
    assert plain["mIoU"] == pytest.approx(report["test_mIoU"], abs=2e-3)
    assert (plain["images"], plain["split"]) == (6, "val") and 0 <= flip["mIoU"] <= 1
    # Multi-scale inference: every candidate scored on the 4 held-out scenes, the best one on the test scenes.
    multi = summary["test"]["multi_scale_flip"]
    held_out = multi["held_out_mIoU"]
    assert list(held_out) == [",".join(f"{s:g}" for s in c) for c in harness.SCALE_CANDIDATES]
    assert multi["scales"] == [float(s) for s in max(held_out, key=held_out.get).split(",")]
    assert multi["images"] == 6 and 0 <= multi["mIoU"] <= 1
    if multi["scales"] == [1.0]:
        assert multi["mIoU"] == flip["mIoU"]
    assert (summary["report"]["val_images"], summary["report"]["test_split"]) == (4, "val")
    assert summary["report"]["selection"] == "best val mIoU (4 training images held out)"
    assert "val_top1" not in summary["report"] and len(summary["epochs"]) == 1
