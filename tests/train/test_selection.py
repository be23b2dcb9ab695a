"""Model selection sees the val split only: every epoch is scored on images held out of training,
best.safetensors is the best of those epochs (or the final one without a val split), and the test
set is scored once, at the end, on best.safetensors."""
import hashlib
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.datasets.fashion_mnist import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from mobilenets.datasets.splits import TensorSplit
from mobilenets.models.mobilenet import load_model
from mobilenets.train import DEFAULTS, load_recipe, tasks, train
from mobilenets.train.evaluate import evaluate
from mobilenets.train.recipes import resumed_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**over) -> dict:
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist", "limit_train": 96,
           "limit_val": 64, "limit_test": 80, "batch_size": 32, "epochs": 2, "lr": 0.05, "resolution": 16}
    return {**cfg, **over}


def digests(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images]


def rows(path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist(download=False)


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    """A short run that records the images it trains on and the images each evaluation scores."""
    trained, scored = [], []
    original_batches, original_evaluate = TensorSplit.batches, tasks.evaluate

    def batches(self, *a, **kw):
        if self.augment is not None and not trained:
            trained.append(self.images.clone())
        yield from original_batches(self, *a, **kw)

    def recording_evaluate(model, split, *a, **kw):
        scored.append(split.images.clone())
        return original_evaluate(model, split, *a, **kw)
    out = tmp_path_factory.mktemp("seen")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(TensorSplit, "batches", batches)
            mp.setattr(tasks, "evaluate", recording_evaluate)
            train(tiny(), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out, trained[0], scored


def test_epochs_are_scored_on_held_out_training_images_and_the_test_set_once(seen, fmnist):
    out, trained, scored = seen
    train_set, test_set = set(digests(fmnist["train"][0])), set(digests(fmnist["test"][0]))
    trained = set(digests(trained))
    assert len(trained) == 96 and trained <= train_set
    assert len(scored) == 3                                 # 2 epochs on val, then the test set once
    for images in scored[:2]:
        val = set(digests(images))
        assert len(val) == 64 and val <= train_set and not val & test_set and not val & trained
    assert len(scored[2]) == 80 and set(digests(scored[2])) <= test_set
    assert all(set(r) >= {"val_loss", "val_top1", "val_top5"} for r in rows(out / "metrics.jsonl"))


def test_report_names_the_split_of_each_score(seen, fmnist):
    out, _, scored = seen
    report = json.loads((out / "report.json").read_text())
    m = rows(out / "metrics.jsonl")
    best = max(m, key=lambda r: (r["val_top1"], -r["epoch"]))    # the first of equal epochs is kept
    assert report["selection"] == "best val_top1" and report["top1_split"] == "test"
    assert (report["val_images"], report["test_images"]) == (64, 80)
    assert report["val_top1"] == report["best_top1"] == best["val_top1"] and report["best_epoch"] == best["epoch"]
    assert report["val_top5"] == best["val_top5"]
    # An independent scoring of best.safetensors on the same test images, taken from the raw set.
    index = {h: i for i, h in enumerate(digests(fmnist["test"][0]))}
    idx = torch.tensor([index[h] for h in digests(scored[2])])
    x, y = fmnist["test"][0][idx], fmnist["test"][1][idx]
    model, meta = load_model(out / "best.safetensors")
    assert meta["epoch"] == best["epoch"]
    r = evaluate(model.to(memory_format=torch.channels_last), TensorSplit(x, y, 16, FMNIST_MEAN, FMNIST_STD),
                 32, num_classes=10)
    assert r["images"] == 80
    assert (report["test_top1"], report["test_top5"]) == (r["top1"], r["top5"])
    assert (report["top1"], report["top5"]) == (r["top1"], r["top5"])


def test_no_val_split_keeps_the_final_epoch(tmp_path):
    out = tmp_path / "final"
    train(tiny(val_fraction=0, limit_train=64, limit_test=48), out, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["selection"] == "final epoch (no validation split)"
    assert (report["val_images"], report["val_top1"], report["best_top1"], report["best_epoch"]) == (0, None, None, 2)
    assert report["test_images"] == 48 and report["top1"] == report["test_top1"] is not None
    assert all(not any(k.startswith("val_") for k in r) for r in rows(out / "metrics.jsonl"))
    assert (out / "training_curve.png").is_file()
    final = torch.load(out / "last.pt", weights_only=True)
    best = load_file(out / "best.safetensors")
    assert best and all(torch.equal(best[k], final["state_dict"][k]) for k in best)
    _, meta = load_model(out / "best.safetensors")
    assert meta["epoch"] == 2 and "top1" not in meta


def test_runs_from_before_held_out_val_resume_on_all_training_images(tmp_path, seen):
    out, _, _ = seen
    old = {k: v for k, v in tiny().items() if k != "limit_test"}
    old["val_fraction"] = 0.1                                # the default of that time
    assert resumed_config(old)["val_fraction"] == 0
    assert resumed_config({**old, "limit_test": 0})["val_fraction"] == 0.1
    assert resumed_config({**old, "data": str(tmp_path)})["val_fraction"] == 0.1    # a flat folder
    # Detection and segmentation chose on the annotations' val split until `validate` set their
    # val_fraction: such runs go on as val_fraction=0; newer ones keep theirs.
    assert resumed_config({**old, "task": "detection"})["val_fraction"] == 0
    assert resumed_config({**old, "task": "segmentation", "limit_test": 0, "val_fraction": None})["val_fraction"] == 0
    assert resumed_config({**old, "task": "segmentation", "limit_test": 0})["val_fraction"] == 0.1
    # A finished run of that time, resumed: its final model becomes best.safetensors.
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"] = {**{k: v for k, v in state["config"].items() if k != "limit_test"}, "val_fraction": 0.1}
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "last.pt")
    shutil.copy(out / "metrics.jsonl", tmp_path / "old")
    report = train(tiny(limit_test=32, _explicit=["limit_test"]), tmp_path / "old", resume=str(tmp_path / "old"),
                   progress=False)
    assert report["selection"] == "final epoch (no validation split)" and report["test_images"] == 32
    best = load_file(tmp_path / "old" / "best.safetensors")
    assert all(torch.equal(best[k], state["state_dict"][k]) for k in best)


def test_resume_keeps_the_split(tmp_path, seen):
    out, _, _ = seen
    with pytest.raises(MobileNetsError, match=r"with val_fraction=5000, not 0; start a new run"):
        train(tiny(val_fraction=0, _explicit=["val_fraction"]), out, resume=str(out), progress=False)


@pytest.mark.parametrize("recipe, over, match", [
    ("fashion-mnist", {"val_fraction": 1.5}, r"val_fraction=1.5 is invalid; allowed: a fraction 0 <= f < 1"),
    ("fashion-mnist", {"limit_test": -1}, r"limit_test=-1 is invalid; allowed: integer >= 0"),
    ("detection", {"val_fraction": -2}, r"val_fraction=-2 is invalid; allowed: a fraction 0 <= f < 1"),
])
def test_invalid_split_settings(tmp_path, recipe, over, match):
    cfg = {**DEFAULTS, **load_recipe(recipe), "recipe": recipe, **over}
    with pytest.raises(MobileNetsError, match=match):
        train(cfg, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def class_folders(root, per_class: int, shade: int) -> None:
    for label, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.new("L", (12, 12), 40 + 150 * label + 2 * j + shade).save(root / name / f"{j}.png")


def test_cli_folder_run_and_eval_of_each_split(tmp_path, capsys):
    data = tmp_path / "data"
    class_folders(data / "train", 10, 0)
    class_folders(data / "test", 3, 1)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--recipe", "fashion-mnist", "--epochs", "2", "--batch-size", "4",
                 "--val-fraction", "6", "--seed", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert (report["val_images"], report["test_images"]) == (6, 6) and printed["test_top1"] == report["test_top1"]
    assert printed["selection"] == "best val_top1" and printed["top1"] == report["test_top1"]
    weights = str(out / "best.safetensors")
    assert main(["eval", weights, "--data", str(data), "--batch-size", "4", "--out", str(tmp_path / "t")]) == 0
    test = json.loads((tmp_path / "t/eval.json").read_text())
    assert test["split"] == "test" and test["images"] == 6 and test["top1"] == report["test_top1"]
    assert f"{data} test (6 images)" in capsys.readouterr().out
    # The held-out split again, from the run's seed and val_fraction: the best epoch's score.
    assert main(["eval", weights, "--data", str(data), "--split", "val", "--val-fraction", "6", "--seed", "3",
                 "--batch-size", "4", "--out", str(tmp_path / "v")]) == 0
    val = json.loads((tmp_path / "v/eval.json").read_text())
    assert val["split"] == "val" and val["images"] == 6 and val["top1"] == report["val_top1"]
    capsys.readouterr()
    assert main(["eval", weights, "--data", str(data), "--split", "val", "--val-fraction", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--split val: {data} has the splits train, test" in err and "\n" not in err
    assert main(["eval", weights, "--data", str(data), "--scales", "1,1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--scales applies to segmenters, not to a classifier" in err and "\n" not in err
    for bad in ("1,x", "0,1", "nan"):
        with pytest.raises(SystemExit) as stop:
            main(["eval", weights, "--data", str(data), "--scales", bad])
        assert stop.value.code == 2 and "--scales" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(data), "--val-fraction", "a lot", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err
    assert "--val-fraction: 'a lot' is neither a number of images nor a fraction" in err
