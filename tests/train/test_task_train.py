"""`mobilenets train --task detection|segmentation` with the classification trainer's loop: the run
directory, resume, and `eval` / `predict` on the weights it writes, on a tiny real scene set."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mobilenets import MobileNetsError, Predictor, create_model, profile
from mobilenets.datasets.folders import DatasetSplit
from mobilenets.cli import main
from mobilenets.train import DEFAULTS, load_recipe, train
from mobilenets.train.recipes import validate
from mobilenets.train.tasks import open_task
from mobilenets.models.weights import save_weights

# Scenes are built from Fashion-MNIST items.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.needs_fmnist]

# channels_last off and the same batch size in `eval`: the trainer's evaluation and `eval` then
# run the same kernels on the same tensors, so their metrics agree to the last digit.
TINY = ["--batch-size", "4", "--set", "resolution=64", "--set", "width_mult=0.35", "--set", "channels_last=false"]
TIMING = ("epoch_seconds", "img_per_s")
# 4 of the 12 training scenes are held out to pick the best epoch: 8 train, 2 steps of 4.
HELD_OUT = ["--set", "val_fraction=4"]


def rows(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("args, task, model, sub, keys", [
    (["--task", "detection"], "detection", "ssdlite_mobilenet_v2", "coco", ("mAP", "AP50", "AP75")),
    # no --task: the model says what it does
    (["--model", "deeplabv3_mobilenet_v2"], "segmentation", "deeplabv3_mobilenet_v2", "voc",
     ("mIoU", "pixel_accuracy")),
])
def test_train_resume_eval_predict(tmp_path, scenes, capsys, args, task, model, sub, keys):
    out, data = tmp_path / "run", str(scenes / sub)
    assert main(["train", *args, "--data", data, "--out", str(out), "--epochs", "1", *TINY, *HELD_OUT]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["task"] == task and set(keys) <= set(printed)
    for name in ("best.safetensors", "last.pt", "metrics.jsonl", "report.json", "training_curve.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert (report["model"], report["task"], report["recipe"], report["epochs"]) == (model, task, task, 1)
    expected = profile(create_model(model, num_classes=11, width_mult=0.35), 64)
    assert (report["params"], report["madds"]) == (expected["params"], expected["madds"])
    metric = keys[0] if task == "segmentation" else "AP50"
    assert report["metric"] == metric and report[f"best_{metric}"] == report[f"val_{metric}"]
    # Chosen on 4 held-out training scenes; the annotations' 6 val scenes are scored once, at the end.
    assert report["selection"] == f"best val {metric} (4 training images held out)"
    assert (report["val_images"], report["test_split"], report["test_images"]) == (4, "val", 6)
    assert report[metric] == report[f"test_{metric}"] and report[f"{metric}_split"] == "test"
    assert report["train_seconds"] > 0 and len(report["classes"]) == 11
    first = rows(out / "metrics.jsonl")
    assert [r["epoch"] for r in first] == [1]
    assert all(0 <= first[0][f"val_{k}"] <= 1 for k in keys) and first[0]["train_loss"] > 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)   # 8 images / 4
    # best.safetensors holds the weights that were evaluated: the recipe's EMA of the weights.
    weights = load_file(out / "best.safetensors")
    assert weights.keys() == {k.removeprefix("module.") for k in state["ema"] if k != "n_averaged"}
    assert all(torch.equal(v, state["ema"][f"module.{k}"]) for k, v in weights.items())

    # Resume continues at epoch 2 and keeps epoch 1's record.
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    capsys.readouterr()
    m = rows(out / "metrics.jsonl")
    assert [r["epoch"] for r in m] == [1, 2] and m[0] == first[0]
    assert torch.load(out / "last.pt", weights_only=True)["global_step"] == 4

    # eval reads the task from the weights file and scores what the trainer scored as test.
    report = json.loads((out / "report.json").read_text())
    assert main(["eval", str(out / "best.safetensors"), "--data", data, "--out", str(tmp_path / "eval"),
                 "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert saved["images"] == 6 and saved["task"] == task
    for k in keys:
        assert saved[k] == pytest.approx(report[f"test_{k}"], abs=1e-6)
        assert f"{k} {saved[k]:.4f}" in text
    assert Image.open(tmp_path / "eval/pred_005.png").size == (64, 64)

    image = scenes / "voc/JPEGImages/val_000002.jpg"
    png = tmp_path / "drawn.png"
    assert main(["predict", str(out / "best.safetensors"), str(image), "--out", str(png), "--min-score", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.endswith(f"-> {png}")
    assert Image.open(png).size == (64, 64)


def test_dense_tasks_choose_on_training_scenes_held_out(scenes):
    cfg = validate({**DEFAULTS, **load_recipe("segmentation"), "recipe": "segmentation",
                    "data": str(scenes / "voc"), "resolution": 64, "seed": 5})
    assert cfg["val_fraction"] == 0.1
    task = open_task(cfg)
    every = task.train_set.items
    train, val = task.train.dataset.items, task.val.dataset.items
    # round(0.1 * 12) = 1 of the 12 training scenes held out; none of the 6 val scenes trains.
    assert (len(every), len(train), len(val)) == (12, 11, 1)
    assert sorted(train + val) == sorted(every) and not set(train) & set(val)
    assert task.test.dataset.items == task.val_set.items and not set(every) & set(task.val_set.items)
    # The held-out scenes are read as evaluation reads them: the same tensors every time.
    first, again = task.val.dataset[0], task.val.dataset[0]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and first[0].shape[-1] == 64
    assert open_task(cfg).val.dataset.items == val     # seeded: a resumed run holds out the same


@pytest.mark.slow
def test_interrupted_detection_run_resumes_exactly(tmp_path, scenes, interrupt_at):
    """Augmentation is seeded per (seed, epoch, item): an interrupted and resumed run matches
    the uninterrupted one record for record and weight for weight."""
    cfg = {**DEFAULTS, **load_recipe("detection"), "recipe": "detection", "data": str(scenes / "coco"),
           "resolution": 64, "width_mult": 0.35, "batch_size": 4, "epochs": 2, "val_fraction": 4}
    straight = tmp_path / "straight"
    train(dict(cfg), straight, progress=False)

    broken = tmp_path / "broken"
    undo = interrupt_at(DatasetSplit, 4)   # 2 steps per epoch: epoch 2, before its second step
    assert train(dict(cfg), broken, progress=False)["interrupted"]
    assert torch.load(broken / "last.pt", weights_only=True)["step_in_epoch"] == 1
    undo()
    train(dict(cfg, _explicit=[]), broken, resume=str(broken), progress=False)

    def plain(path):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(path / "metrics.jsonl")]
    assert plain(broken) == plain(straight)
    a = torch.load(straight / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(broken / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_task_and_model_must_agree(tmp_path, scenes, capsys):
    for argv, match in (
            (["--task", "detection", "--model", "mobilenet_v2"],
             "--model mobilenet_v2 is a classification model, not a detection one; detection models: "
             "ssdlite_mobilenet_v2, ssdlite_mobilenet_v3_large"),
            (["--task", "segmentation", "--set", "label_smoothing=0.1"],
             "label_smoothing=0.1 applies to classification only"),
            (["--model", "ssdlite_mobilenet_v2", "--in-chans", "1"], "in_chans=1 is invalid")):
        assert main(["train", *argv, "--data", str(scenes / "coco"), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_classifier_tools_refuse_task_files(tmp_path, scenes, capsys):
    from mobilenets.models.weights import save_task_weights
    from mobilenets.models.weights import save_weights
    det = tmp_path / "det.safetensors"
    save_task_weights(det, create_model("ssdlite_mobilenet_v2", num_classes=11, width_mult=0.35),
                      "detection", ["background", *"abcdefghij"], 64)
    with pytest.raises(MobileNetsError, match="a detection model, not a classifier"):
        Predictor(det)
    cls = tmp_path / "cls.safetensors"
    save_weights(cls, create_model("mobilenet_v2_035", num_classes=3))
    image = str(scenes / "voc/JPEGImages/val_000000.jpg")
    assert main(["predict", str(cls), image, "--out", str(tmp_path / "o.png")]) == 2
    assert "--out draws boxes or masks" in capsys.readouterr().err


@pytest.mark.slow
def test_backbone_from_a_classifier_starts_the_segmenter(tmp_path, scenes, capsys):
    classifier = tmp_path / "cls.safetensors"
    save_weights(classifier, create_model("mobilenet_v2", num_classes=10, width_mult=0.35))
    out, data = tmp_path / "seg", str(scenes / "voc")
    assert main(["train", "--model", "deeplabv3_mobilenet_v2", "--data", data, "--out", str(out),
                 "--epochs", "1", "--backbone", str(classifier), *TINY]) == 0
    seg = create_model("deeplabv3_mobilenet_v2", num_classes=11, width_mult=0.35)
    n = sum(k.startswith("backbone.") and "num_batches" not in k for k in seg.state_dict())
    assert f"backbone: {n} of the model's {n} backbone tensors from {classifier}" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["backbone"] == str(classifier)
    wide = tmp_path / "wide.safetensors"
    save_weights(wide, create_model("mobilenet_v2", num_classes=10, width_mult=1.0))
    assert main(["train", "--model", "deeplabv3_mobilenet_v2", "--data", data, "--out",
                 str(tmp_path / "other"), "--epochs", "1", "--backbone", str(wide), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "wide.safetensors: shares no backbone tensor" in err and "\n" not in err
