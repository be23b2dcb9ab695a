import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mobilenets.datasets.fashion_mnist import FMNIST_CLASSES, FMNIST_MEAN
from mobilenets.datasets.splits import TensorSplit
from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.train import DEFAULTS, TrainingStopped, load_recipe, train
from mobilenets.train.tasks import ClassificationTask
from mobilenets.models.mobilenet import load_model
from v2_counts import v2_counts

# Real Fashion-MNIST runs (the data opens before the model is built).
pytestmark = pytest.mark.needs_fmnist

TIMING = ("epoch_seconds", "img_per_s")


def tiny(**over) -> dict:
    """A real Fashion-MNIST run small enough for a test: 512 training images, α 0.35."""
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist",
           "limit_train": 512, "limit_val": 256, "limit_test": 256, "batch_size": 32, "epochs": 2,
           "lr": 0.05}
    cfg.update(over)
    return cfg


def rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    report = train(tiny(epochs=5, limit_train=384, batch_size=16, lr=0.03, erasing=0.0), out, progress=False)
    return out, report


@pytest.mark.slow
def test_run_directory_contract(run):
    out, report = run
    for name in ("best.safetensors", "last.pt", "metrics.jsonl", "report.json", "training_curve.png"):
        assert (out / name).is_file(), name
        # Results are for others to read too: the usual mode of a new file under this umask.
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask(), name
    assert not (out / "train.lock").exists()
    saved = json.loads((out / "report.json").read_text())
    assert saved["model"] == "mobilenet_v2" and saved["epochs"] == 5
    assert 0 <= saved["top5"] <= 1 and saved["top1"] <= saved["top5"]
    # V2 Table 2 at α 0.35, 28 px, one channel in, 10 classes, small input (tests/v2_counts.py)
    assert (saved["params"], saved["madds"]) == v2_counts(0.35, 28, 1, 10, small_input=True)
    assert saved["skipped_files"] == 0 and saved["train_seconds"] > 0
    m = rows(out / "metrics.jsonl")
    assert [r["epoch"] for r in m] == [1, 2, 3, 4, 5]
    # It learns: 384 real images, 120 steps, well above chance (10 %) on 256 held-out images.
    assert m[-1]["train_loss"] < m[0]["train_loss"]
    assert saved["best_top1"] >= 0.5
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 5 and state["step_in_epoch"] == 0 and state["global_step"] == 120


@pytest.mark.slow
def test_best_weights_carry_what_inference_needs(run):
    out, report = run
    model, meta = load_model(out / "best.safetensors")
    assert meta["classes"] == FMNIST_CLASSES
    assert meta["preprocessing"]["resolution"] == 28 and meta["preprocessing"]["in_chans"] == 1
    assert meta["preprocessing"]["mean"] == list(FMNIST_MEAN)
    assert meta["top1"] == report["best_top1"]
    assert model.model_kwargs == {"num_classes": 10, "in_chans": 1, "width_mult": 0.35, "small_input": True}


# 256 images in batches of 32: 8 steps per epoch.
RESUMED = dict(limit_train=256, limit_val=64, epochs=2, resolution=16)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run that interrupted and resumed ones must equal."""
    out = tmp_path_factory.mktemp("straight")
    train(tiny(**RESUMED), out, progress=False)
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Metrics (but timing), best weights and the whole last state, bit for bit."""
    assert without_timing(rows(b / "metrics.jsonl")) == without_timing(rows(a / "metrics.jsonl"))
    wa, wb = load_file(a / "best.safetensors"), load_file(b / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (torch.load(p / "last.pt", weights_only=True) for p in (a, b))
    assert sa["state_dict"].keys() == sb["state_dict"].keys()
    assert all(torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"])
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    assert all(torch.equal(torch.as_tensor(oa[k][n]), torch.as_tensor(ob[k][n])) for k in oa for n in oa[k])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"]) and sa["global_step"] == sb["global_step"]


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, interrupt_at, straight):
    cfg = tiny(**RESUMED)
    broken = tmp_path / "broken"
    # 8 steps per epoch: interrupted before epoch 2's third step
    undo = interrupt_at(TensorSplit, 11)
    assert train(dict(cfg), broken, progress=False)["interrupted"]
    state = torch.load(broken / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    undo()
    train(dict(cfg, _explicit=[]), broken, resume=str(broken), progress=False)
    assert_same_run(straight, broken)


def test_ctrl_c_inside_a_step_checkpoints_the_step_boundary(tmp_path, monkeypatch, straight):
    """A real SIGINT in the middle of a step (after the forward pass moved the BN statistics):
    the step finishes, the checkpoint holds its end, and the resumed run equals the straight one."""
    original, calls = ClassificationTask.train_loss, [0]

    def loss_then_ctrl_c(self, model, batch):
        out = original(self, model, batch)
        calls[0] += 1
        if calls[0] == 11:        # epoch 2, step 3
            os.kill(os.getpid(), signal.SIGINT)
        return out
    monkeypatch.setattr(ClassificationTask, "train_loss", loss_then_ctrl_c)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    broken = tmp_path / "broken"
    result = train(tiny(**RESUMED), broken, progress=False)
    assert result == {"interrupted": True, "signal": "SIGINT", "epoch": 1, "step_in_epoch": 3}
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    state = torch.load(broken / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 11)
    # Every BN layer has seen exactly the 11 finished steps' batches.
    tracked = {v.item() for k, v in state["state_dict"].items() if k.endswith("num_batches_tracked")}
    assert tracked == {11}
    monkeypatch.setattr(ClassificationTask, "train_loss", original)
    train(tiny(**RESUMED, _explicit=[]), broken, resume=str(broken), progress=False)
    assert_same_run(straight, broken)


def test_second_ctrl_c_inside_a_step_stops_at_once_and_resumes_from_the_last_checkpoint(
        tmp_path, monkeypatch, capsys, straight):
    """Two Ctrl-C in one step (an impatient user): the run stops inside the step without
    saving its half-applied update, says so in one line, and resumes from epoch 1's end."""
    original, calls = ClassificationTask.train_loss, [0]

    def loss_then_two_ctrl_c(self, model, batch):
        out = original(self, model, batch)
        calls[0] += 1
        if calls[0] == 11:        # epoch 2, step 3
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return out
    monkeypatch.setattr(ClassificationTask, "train_loss", loss_then_two_ctrl_c)
    broken = tmp_path / "broken"
    result = train(tiny(**RESUMED), broken, progress=False)
    assert result == {"interrupted": True, "signal": "SIGINT", "epoch": 1, "step_in_epoch": 2}
    assert capsys.readouterr().err == (f"interrupted inside step 3 of epoch 2; that step is not saved; the last "
                                       f"checkpoint is {broken / 'last.pt'} (epoch 1); continue with --resume {broken}\n")
    state = torch.load(broken / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 8)
    assert not (broken / "train.lock").exists()
    monkeypatch.setattr(ClassificationTask, "train_loss", original)
    train(tiny(**RESUMED, _explicit=[]), broken, resume=str(broken), progress=False)
    assert_same_run(straight, broken)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = TensorSplit.batches

    def poisoned(self, batch, seed, epoch, *a, **kw):
        for x, y in original(self, batch, seed, epoch, *a, **kw):
            yield (x * float("nan") if self.augment is not None and epoch == 1 else x), y
    monkeypatch.setattr(TensorSplit, "batches", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingStopped, match=r"loss became nan at epoch 2 step 1.*last\.pt \(epoch 1\)"):
        train(tiny(limit_train=64, limit_val=32, resolution=16), out, progress=False)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("over, match", [
    ({"epochs": 0}, r"epochs=0 is invalid; allowed: integer >= 1"),
    ({"lr": -0.1}, r"lr=-0.1 is invalid; allowed: number > 0"),
    ({"schedule": "linear"}, r"schedule='linear' is invalid"),
    ({"label_smoothing": 1.5}, r"label_smoothing=1.5 is invalid"),
    ({"model_options": ["relu6"]}, r"model_options=\['relu6'\] is invalid; allowed: a JSON object"),
    ({"model_options": {"width_mult": 0.5}}, r"allowed: options other than width_mult \(set those"),
    ({"model_options": {"proj": "relu6"}}, r"mobilenet_v2 does not take proj;"),
])
def test_invalid_recipe_values(tmp_path, over, match):
    with pytest.raises(MobileNetsError, match=match):
        train(tiny(**over), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_model_options_reach_the_weights_and_old_checkpoints_resume(tmp_path, run):
    out, report = run
    # A checkpoint written before model_options existed resumes with the default ({}).
    state = torch.load(out / "last.pt", weights_only=True)
    del state["config"]["model_options"]
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "last.pt")
    shutil.copy(out / "best.safetensors", tmp_path / "old")     # the run's test score is this file's
    resumed = train(tiny(_explicit=[]), tmp_path / "old", resume=str(tmp_path / "old"), progress=False)
    assert resumed["top1"] == report["top1"] and resumed["model_kwargs"] == report["model_kwargs"]

    opts = train(tiny(limit_train=32, limit_val=32, epochs=1, model_options={"proj_act": "relu6"}),
                 tmp_path / "relu6", progress=False)
    assert opts["model_kwargs"]["proj_act"] == "relu6"
    model, meta = load_model(tmp_path / "relu6" / "best.safetensors")
    assert meta["model"] == "mobilenet_v2" and meta["model_kwargs"]["proj_act"] == "relu6"
    assert {b.proj_act for b in model.arch.blocks} == {"relu6"}


@pytest.mark.slow
def test_resume_errors_overwrite_nothing(tmp_path, run):
    out, _ = run
    with pytest.raises(MobileNetsError, match=r"no checkpoint at .*missing$"):
        train(tiny(_explicit=[]), tmp_path / "missing", resume=str(tmp_path / "missing"), progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(MobileNetsError, match=r"not a readable checkpoint"):
        train(tiny(_explicit=[]), bad, resume=str(bad), progress=False)
    assert (bad / "last.pt").read_bytes() == b"\x00garbage"
    before = (out / "last.pt").read_bytes()
    with pytest.raises(MobileNetsError, match=r"trains mobilenet_v2 with model='mobilenet_v2', not 'mobilenet_v3_small'"):
        train(tiny(model="mobilenet_v3_small", _explicit=["model"]), out, resume=str(out), progress=False)
    with pytest.raises(MobileNetsError, match=r"already holds a run"):
        train(tiny(), out, progress=False)
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_cli_train_eval_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--data", "fashion-mnist", "--epochs", "1", "--batch-size", "32", "--out", str(out),
               "--set", "limit_train=128", "--set", "limit_val=64", "--set", "limit_test=100",
               "--set", "resolution=16"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and printed["epochs"] == 1 and set(printed) >= {"top1", "top5", "params", "madds"}
    assert printed["selection"] == "best val_top1" and printed["top1"] == printed["test_top1"]
    rc = main(["eval", str(out / "best.safetensors"), "--data", "fashion-mnist"])
    text = capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    assert rc == 0 and result["images"] == 10000 and (out / "confusion_matrix.png").is_file()
    assert result["split"] == "test" and "fashion-mnist test (10000 images)" in text
    assert sum(map(sum, result["confusion"])) == 10000 and len(result["per_class"]) == 10
    assert f"top-1 {result['top1']:.4f}" in text and result["flip"] is False
    assert main(["eval", str(out / "best.safetensors"), "--data", "fashion-mnist", "--flip",
                 "--out", str(tmp_path / "flip")]) == 0
    flipped = json.loads((tmp_path / "flip/eval.json").read_text())
    assert flipped["flip"] is True and flipped["images"] == 10000 and flipped["loss"] != result["loss"]
    assert "10000 images with flipped copies" in capsys.readouterr().out
    for argv, match in ((["train", "--out", str(tmp_path / "e"), "--epochs", "0"], "epochs=0"),
                        (["train", "--out", str(tmp_path / "e"), "--recipe", "nope"], "--recipe nope"),
                        (["train", "--out", str(tmp_path / "e"), "--set", "bogus=1"], "--set bogus=1")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err
