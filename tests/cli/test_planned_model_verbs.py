"""A network whose every shortcut group, expansion and squeeze-excite has a width of its own (a
random channel plan, as `adapt` and `search` make them) goes through every verb unchanged:
profile, export, quantize, predict, eval, bench and a phone engine. References: the eager
model's own predictions and accuracy, counted here."""
import json
import random

import numpy as np
import pytest
import torch

from deploy_models import PRE, fmnist_checkpoint, fmnist_test_images
from mobilenets import create_model, load_model
from mobilenets.cli import main
from mobilenets.datasets.calibration import fashion_mnist, preprocessed
from mobilenets.deploy.predict import Predictor
from mobilenets.models.plan import plan_of, shortcut_groups

pytestmark = [pytest.mark.needs_fmnist, pytest.mark.usefixtures("one_thread")]
BASE = dict(width_mult=0.35, small_input=True, in_chans=1, num_classes=10)


def random_plan(arch, seed: int) -> dict:
    """Every width of `arch` drawn anew, a multiple of 8 up to its own; one draw per shortcut group."""
    rng, plan = random.Random(seed), plan_of(arch)

    def draw(w):
        return w if not w else 8 * rng.randint(1, max(1, w // 8))
    for group in shortcut_groups(arch):
        first = plan["stem"] if group[0] == "stem" else plan["out"][group[0]]
        width = draw(first)
        for member in group:
            if member == "stem":
                plan["stem"] = width
            else:
                plan["out"][member] = width
    plan["expand"] = [draw(w) for w in plan["expand"]]
    plan["se"] = [draw(w) for w in plan["se"]]
    plan["last_conv"], plan["head"] = draw(plan["last_conv"]), draw(plan["head"])
    return plan


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    d = tmp_path_factory.mktemp("planned")
    base = create_model("mobilenet_v3_small", **BASE)
    plan = random_plan(base.arch, seed=3)
    assert plan != plan_of(base.arch)
    model = fmnist_checkpoint(d / "planned.safetensors", "mobilenet_v3_small", channel_plan=plan)
    images, _ = fmnist_test_images(32)
    with torch.inference_mode():
        eager = model(preprocessed(images, PRE)).argmax(1)
    return d, plan, model, images, eager


def agreement(file, images, eager) -> float:
    """The share of images whose top-1 class from `file` is the eager model's."""
    top1 = [ranked[0]["index"] for ranked in Predictor(str(file))(images)]
    return float(np.mean([t == e for t, e in zip(top1, eager.tolist())]))


def test_planned_weights_record_the_plan_and_profile(planned, capsys):
    d, plan, model, _, _ = planned
    loaded, meta = load_model(d / "planned.safetensors")
    assert meta["model_kwargs"]["channel_plan"] == plan
    assert main(["profile", str(d / "planned.safetensors"), "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    # Parameters counted here, from the tensors of the built model.
    assert counted["params"] == sum(p.numel() for p in model.parameters())


def test_export_quantize_and_predict_agree_with_eager(planned, tmp_path):
    d, _, _, images, eager = planned
    fp32, int8 = tmp_path / "planned.onnx", tmp_path / "planned_int8.onnx"
    assert main(["export", str(d / "planned.safetensors"), "--format", "onnx", "--out", str(fp32)]) == 0
    assert main(["quantize", str(d / "planned.safetensors"), "--out", str(int8)]) == 0
    assert agreement(fp32, images, eager) == 1.0
    assert agreement(int8, images, eager) >= 0.85
    assert main(["verify", str(fp32), str(int8)]) == 0


def test_eval_scores_the_planned_model_as_counted_here(planned, tmp_path):
    d, _, model, _, _ = planned
    images, labels = fashion_mnist("test")
    with torch.inference_mode():
        right = sum(int((model(preprocessed(images[i:i + 1000], PRE)).argmax(1) == labels[i:i + 1000]).sum())
                    for i in range(0, len(images), 1000))
    assert main(["eval", str(d / "planned.safetensors"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == len(images) == 10_000
    assert result["top1"] == pytest.approx(right / len(images), abs=2e-4)   # a float32 tie or two


def test_bench_runs_each_backend_on_the_planned_model(planned, tmp_path):
    d, *_ = planned
    out = tmp_path / "bench.json"
    assert main(["bench", str(d / "planned.safetensors"), "--batch", "1", "--backends", "eager,onnxruntime,int8",
                 "--repeats", "3", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert sorted(r["backend"] for r in rows) == ["eager", "int8", "onnxruntime"]
    assert all(r["median_ms"] > 0 and r["batch"] == 1 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix", [("tflite", ".tflite"), ("executorch", ".pte")])
def test_phone_engine_files_of_the_planned_model_predict_as_eager(planned, tmp_path, fmt, suffix):
    d, _, _, images, eager = planned
    file = tmp_path / f"planned{suffix}"
    assert main(["export", str(d / "planned.safetensors"), "--format", fmt, "--out", str(file)]) == 0
    assert agreement(file, images, eager) == 1.0
