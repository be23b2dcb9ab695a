"""A run stopped by signals, a full disk or a crash, and two runs on one directory."""
import builtins
import errno
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mobilenets.cli import main
from mobilenets.core.errors import MobileNetsError
from mobilenets.train import DEFAULTS, TrainingStopped, load_recipe, train
from mobilenets.train import loop
from mobilenets.train.interrupts import StopSignals

ROOT = Path(__file__).resolve().parents[2]


def tiny(**over) -> dict:
    """Two steps of 32 Fashion-MNIST images per epoch at 16 px."""
    cfg = {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist", "limit_train": 64,
           "limit_val": 32, "batch_size": 32, "epochs": 2, "lr": 0.05, "resolution": 16}
    cfg.update(over)
    return cfg


CLI_TINY = ["--epochs", "1", "--batch-size", "32", "--set", "limit_train=64", "--set", "limit_val=32",
            "--set", "resolution=16"]


def python(code: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class Raised(Exception):
    pass


@pytest.fixture
def sigterm_raises():
    """SIGTERM raises in this process instead of ending it, should a test's run fail to handle it."""
    def handler(signum, frame):
        raise Raised(signal.Signals(signum).name)
    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_at_a_step_boundary_with_exit_143(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "50", "--batch-size", "16", "--set", "limit_train=256",
            "--set", "limit_val=32", "--set", "resolution=16", "--set", "log_every=1"]
    proc = python(f"import sys; from mobilenets.cli import main; sys.exit(main({argv!r}))")
    steps = out / "steps.jsonl"
    deadline = time.monotonic() + 300
    while not (steps.exists() and len(steps.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    m = re.fullmatch(rf"stopped by SIGTERM at epoch (\d+) step (\d+); checkpoint written to {re.escape(str(out))}"
                     rf"/last\.pt; continue with --resume {re.escape(str(out))}", last)
    assert m, last
    state = torch.load(out / "last.pt", weights_only=True)
    assert (state["epoch"] + 1, state["step_in_epoch"]) == (int(m[1]), int(m[2]))
    # The checkpoint holds exactly the steps that finished (each logged one line), none half done.
    logged = len(steps.read_text().splitlines())
    assert state["global_step"] == logged == state["epoch"] * 16 + state["step_in_epoch"]
    assert not (out / "train.lock").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_start_up_is_one_line(tmp_path, capsys, monkeypatch, sigterm_raises, signum, code):
    opened = loop.open_task

    def open_then_signal(cfg):
        task = opened(cfg)
        os.kill(os.getpid(), signum)
        return task
    monkeypatch.setattr(loop, "open_task", open_then_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["train", "--out", str(tmp_path / "run"), *CLI_TINY]) == code
    err = capsys.readouterr().err
    assert err == f"mobilenets: interrupted ({signal.Signals(signum).name}) during start-up, before the first training step\n"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "run").exists()   # created for the lock, empty, so removed


def test_a_second_training_on_one_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = python("import sys, time; from pathlib import Path; from mobilenets.train.checkpoint import run_lock\n"
                    f"with run_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(600)")
    try:
        assert holder.stdout.readline() == "held\n", holder.stderr.read() if holder.poll() is not None else ""
        info = json.loads((out / "train.lock").read_text())
        assert main(["train", "--out", str(out), *CLI_TINY]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"out={out} is in use by another training" in err
        assert f"pid {holder.pid} on {socket.gethostname()}, started {info['started']}" in err
        assert sorted(p.name for p in out.iterdir()) == ["train.lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone and with it its lock: the directory trains again.
    assert main(["train", "--out", str(out), *CLI_TINY]) == 0
    assert (out / "report.json").is_file() and not (out / "train.lock").exists()


def test_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []
    original = loop.Run.end_epoch

    def end_epoch_with_a_rival(self):
        with pytest.raises(MobileNetsError, match=rf"in use by another training \(pid {os.getpid()} "):
            if (out / "last.pt").exists():    # from epoch 1 on, a rival would resume
                train(tiny(_explicit=[]), out, resume=str(out), progress=False)
            else:
                train(tiny(), out, progress=False)
        seen.append(json.loads((out / "train.lock").read_text())["pid"])
        original(self)
    monkeypatch.setattr(loop.Run, "end_epoch", end_epoch_with_a_rival)
    train(tiny(), out, progress=False)
    assert seen == [os.getpid()] * 2 and not (out / "train.lock").exists()


def test_full_disk_while_checkpointing_keeps_the_last_good_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    write, attempts = Path.write_bytes, []

    def disk_fills_up(self, data):
        if self.name.startswith(".last.pt."):
            attempts.append(self.name)
            if len(attempts) == 2:      # epoch 2's checkpoint: part of it, then no space
                write(self, data[:4096])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, data)
    monkeypatch.setattr(Path, "write_bytes", disk_fills_up)
    with pytest.raises(TrainingStopped) as e:
        train(tiny(), out, progress=False)
    assert str(e.value) == (f"cannot write {out}/last.pt (No space left on device); training stopped; the last good "
                            f"checkpoint is kept: {out}/last.pt (epoch 1); free space, then resume from {out}")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp")) and not (out / "train.lock").exists()


def test_resume_drops_a_torn_metrics_line_and_stale_temp_files(tmp_path):
    out = tmp_path / "run"
    train(tiny(epochs=1), out, progress=False)
    metrics = out / "metrics.jsonl"
    first = metrics.read_text()
    with open(metrics, "a") as f:
        f.write('{"epoch": 2, "train_loss": 1.2')      # a crash in the middle of a line
    stale = [out / ".last.pt.a1b2_c3d.tmp", out / ".best.safetensors.zz9yx8wv.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = out / "notes.tmp"
    keep.write_text("not ours")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(metrics))}:2: dropped a line that is not a metrics record"):
        report = train(tiny(epochs=2, _explicit=["epochs"]), out, resume=str(out), progress=False)
    assert report["epochs"] == 2
    lines = metrics.read_text().splitlines()
    assert lines[0] == first.strip() and [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    assert not any(p.exists() for p in stale) and keep.exists()


def test_ctrl_c_while_torch_loads_is_one_line(monkeypatch, capsys):
    """`python -m mobilenets` imports the package (which loads no torch) and then the CLI."""
    probe = python("import sys, mobilenets; print(sorted({'torch', 'torchvision'} & set(sys.modules)))")
    assert probe.communicate(timeout=120)[0].strip() == "[]"
    real_import = builtins.__import__

    def interrupted_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "cli.main" and level == 1:
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)
    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    with pytest.raises(SystemExit) as e:
        runpy.run_module("mobilenets", run_name="__main__")
    assert e.value.code == 130 and capsys.readouterr().err == "mobilenets: interrupted\n"


def test_an_ignored_signal_stays_ignored():
    """A shell starts background jobs with SIGINT ignored; a run must not take that back."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
