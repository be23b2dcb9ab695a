"""benchmarks/accuracy.py summarises a real (tiny) Fashion-MNIST run: its test re-scoring agrees
with the score the trainer recorded at the end of the run, and the summary names the machine."""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from mobilenets.cli import main

ROOT = Path(__file__).resolve().parents[2]


def load_harness():
    spec = importlib.util.spec_from_file_location("accuracy_harness", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

