"""Two gloo ranks on loopback train exactly like one process on the same global batch."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mobilenets.train import DEFAULTS, load_recipe, train


def config(batch: int) -> dict:
    return {**DEFAULTS, **load_recipe("fashion-mnist"), "recipe": "fashion-mnist",
            "limit_train": 192, "limit_val": 64, "limit_test": 64, "batch_size": batch, "epochs": 1, "lr": 0.01,
            "resolution": 28, "sync_bn": True, "log_every": 1, "device": "cpu",
            "dropout": 0.0}  # dropout masks come from each rank's own RNG stream


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config(16), out, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each rank gets one of the two cores; the reference run too
    single = tmp_path / "single"
    try:
        train(config(32), single, progress=False)
    finally:
        torch.set_num_threads(threads)

    ddp = tmp_path / "ddp"
    mp.start_processes(_rank, args=(2, _free_port(), str(ddp)), nprocs=2, join=True, start_method="spawn")

    one, two = steps(single / "steps.jsonl"), steps(ddp / "steps.jsonl")
    assert len(one) == len(two) == 6  # 192 / 32
    # Step 1 is one forward pass: synced BN over the two halves equals BN over the whole batch.
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=2e-5)
    # Later steps drift as float rounding does. At initialisation this network amplifies
    # rounding: one process with a textbook BatchNorm (same maths, other rounding) has 1.7 %
    # different gradients from nn.BatchNorm2d; the two ranks' are within 0.5 %.
    for a, b in zip(one, two):
        assert a["lr"] == b["lr"]
        assert b["loss"] == pytest.approx(a["loss"], rel=3e-2), (a, b)
    m1 = [json.loads(ln) for ln in (single / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(ln) for ln in (ddp / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(m1, m2):
        assert b["val_top1"] == pytest.approx(a["val_top1"], abs=3 / 64)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=3e-2)
    report = json.loads((ddp / "report.json").read_text())
    assert report["world_size"] == 2
    # Each rank held out the same val split and scored its share of the test set once, at the end.
    assert report["val_images"] == report["test_images"] == 64 and report["selection"] == "best val_top1"
    one = json.loads((single / "report.json").read_text())
    assert report["test_top1"] == pytest.approx(one["test_top1"], abs=3 / 64)
