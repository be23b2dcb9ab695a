"""`mobilenets train` on input it cannot use: one line naming the value, exit code 2, nothing
written; and the values it takes but warns about."""
import os
import pickle

import pytest
import torch

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.train import DEFAULTS, load_recipe, train
from mobilenets.train.checkpoint import CHECKPOINT_FORMAT
from mobilenets.train.recipes import validate

TINY = ["--epochs", "1", "--batch-size", "32", "--set", "limit_train=64", "--set", "limit_val=32",
        "--set", "resolution=16"]
CPUS = os.cpu_count() or 1


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mobilenets: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu9"], "device='tpu9' is not a device name; allowed: cpu, cuda, cuda:N, mps"),
    (["--set", "scale=[2,1]"], "scale=[2, 1] is invalid; allowed: [low, high] area fractions with 0 < low <= high <= 1"),
    (["--set", "scale=[0.5,0.2]"], "scale=[0.5, 0.2] is invalid"),
    (["--set", "scale=[0,1]"], "scale=[0, 1] is invalid"),
    (["--set", "scale=[0.5]"], "scale=[0.5] is invalid"),
    (["--set", "scale=big"], "scale='big' is invalid"),
    (["--set", "resolution=100000"], "resolution=100000 is invalid; allowed: integer 8..4096"),
    (["--workers", "10000"], f"workers=10000 is invalid; allowed: integer 0..{4 * CPUS} (4 per CPU core, {CPUS} here)"),
    (["--set", "workers=10000"], "workers=10000 is invalid"),
    (["--width-mult", "9"], "width_mult=9.0 is out of range; allowed: 0 < width_mult <= 8"),
    (["--set", "width_mult=-1"], "width_mult=-1 is out of range"),
    (["--data-dir", "/nonexistent/fmnist"], "data_dir=/nonexistent/fmnist: no such directory"),
])
def test_bad_values_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, *args])
    assert message in err
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), *TINY, "--device", "cuda"])
    assert "device='cuda' needs a CUDA GPU and this machine has none that torch can use; use device='cpu'" in err


def test_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    err = one_line_error(capsys, ["train", "--out", str(out), *TINY])
    assert f"out={out} is a file" in err and out.read_text() == "keep me"


def test_workers_bound_is_four_per_cpu():
    cfg = {**DEFAULTS, "recipe": "modern"}
    assert validate({**cfg, "workers": 4 * CPUS})["workers"] == 4 * CPUS
    with pytest.raises(MobileNetsError, match=rf"workers={4 * CPUS + 1} is invalid"):
        validate({**cfg, "workers": 4 * CPUS + 1})
    assert validate({**cfg, "resolution": 4096, "scale": [0.25, 0.25]})["resolution"] == 4096


class RunsACommand:
    """What a malicious checkpoint would hold: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_is_refused_naming_the_global(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "it-ran"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": RunsACommand(marker)}, run / "last.pt")
    # The global pickle stores for os.system, independently of torch: posix.system here.
    module = pickle.whichmodule(os.system, "system")
    err = one_line_error(capsys, ["train", "--resume", str(run)])
    assert f"{run / 'last.pt'} refused: it needs the global {module}.system, which no training checkpoint holds" in err
    assert not marker.exists()


def test_tiny_width_warns_that_every_block_is_at_the_minimum(tmp_path):
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist", "limit_train": 32,
           "limit_val": 32, "batch_size": 32, "epochs": 1, "resolution": 16}
    # MobileNetV2's widest block has 320 channels; 320e-9 rounds up to make_divisible's
    # minimum, 8, and so does every narrower block.
    with pytest.warns(UserWarning, match=r"width_mult=1e-09 gives every block the minimum 8 channels"):
        train({**cfg, "width_mult": 1e-9}, tmp_path / "narrow", progress=False)
