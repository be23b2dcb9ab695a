"""The committed weights re-make the committed headline numbers: `mobilenets eval` on
benchmarks/results/accuracy/NAME.safetensors, on the same test images, gives the test scores that
the training run recorded in NAME.json (which `benchmarks/accuracy.py` wrote from its own
`mobilenets eval` when the run ended). A changed metric, preprocessing, data reader or scene
generator shows up here as a different score.
"""
import hashlib
import json
from pathlib import Path

import pytest

from mobilenets.cli import main
from mobilenets.datasets.scenes import write_scenes
from test_accuracy import load_harness

HARNESS = load_harness()
RESULTS = HARNESS.RESULTS
pytestmark = [pytest.mark.needs_fmnist, pytest.mark.slow]


def committed(name: str) -> tuple[Path, dict]:
    weights, summary = RESULTS / f"{name}.safetensors", json.loads((RESULTS / f"{name}.json").read_text())
    # `--keep-weights` stores a float16 copy and records its hash beside the run's own.
    stored = summary.get("stored_weights_sha256", summary["weights_sha256"])
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == stored
    return weights, summary


def test_fashion_mnist_best_weights_score_their_test_top1(tmp_path):
    weights, summary = committed("fashion-mnist-best")
    assert main(["eval", str(weights), "--data", "fashion-mnist", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "eval.json").read_text())
    want = summary["test"]["plain"]
    assert got["split"] == "test" and got["images"] == want["images"] == 10_000
    # Another CPU's kernels may move a logit by a rounding error; that flips at most a few images.
    assert got["top1"] == pytest.approx(want["top1"], abs=3e-4)
    assert got["top1"] >= 0.94


@pytest.fixture(scope="module")
def val_scenes(tmp_path_factory) -> Path:
    """The 500 validation scenes that the detection and segmentation runs scored. They come from
    their own seeded stream (seed + 1), whatever the number of training scenes, so they are
    written here without the 4000 others."""
    scene_args = dict(zip(HARNESS.SCENE_ARGS[::2], map(int, HARNESS.SCENE_ARGS[1::2])))
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, train=0, val=scene_args["--val"], seed=scene_args["--seed"], progress=False)
    return root


def evaluate_on_scenes(weights: Path, summary: dict, data: Path, out: Path) -> dict:
    assert f"runs/scenes/{data.name}" in summary["train_command"] and summary["report"]["test_images"] == 500
    assert main(["eval", str(weights), "--data", str(data), "--split", "val", "--out", str(out)]) == 0
    got = json.loads((out / "metrics.json").read_text())
    assert got["images"] == summary["test"]["plain"]["images"] == 500
    return got


# name, scene format, allowed distance from the recorded score, floor. One box more or less above
# a threshold moves AP50 by about 1e-3 over 500 scenes; a logit moved by another CPU's rounding
# flips a few boundary pixels of 500 × 192².
SCENE_RESULTS = [("detection", "coco", {"AP50": 3e-3, "mAP": 3e-3}, {"AP50": 0.70}),
                 ("segmentation-fmnist-backbone", "voc", {"mIoU": 2e-3, "pixel_accuracy": 1e-3}, {}),
                 ("segmentation-256px", "voc", {"mIoU": 2e-3, "pixel_accuracy": 1e-3}, {"mIoU": 0.68})]


@pytest.mark.parametrize("name, fmt, tolerance, floor", SCENE_RESULTS, ids=[r[0] for r in SCENE_RESULTS])
def test_scene_weights_score_their_result_on_the_validation_scenes(tmp_path, val_scenes, name, fmt,
                                                                   tolerance, floor):
    weights, summary = committed(name)
    got = evaluate_on_scenes(weights, summary, val_scenes / fmt, tmp_path)
    want = summary["test"]["plain"]
    for metric, within in tolerance.items():
        assert got[metric] == pytest.approx(want[metric], abs=within), metric
    for metric, least in floor.items():
        assert got[metric] >= least, metric
