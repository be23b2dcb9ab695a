"""kill -9 while a writer writes: the file it replaces stays whole, byte for byte.

Each writer runs in its own process with `os.fsync` made to stop the process once the new bytes
of a file in the output's folder are written and flushed (files elsewhere, such as quantize's
intermediate fp32 export, pass), until the test kills it: the moment at which a writer that
wrote into its output in place would leave a torn or half-replaced file behind."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from mobilenets.core.io import TEMP_NAME
from deploy_models import fmnist_checkpoint

pytestmark = pytest.mark.needs_fmnist      # the checkpoint's BN statistics come from real images
ROOT = Path(__file__).resolve().parents[2]

HOLD_AT_FSYNC = """
import json, os, sys, time
real_fsync = os.fsync
def held_fsync(fd):
    real_fsync(fd)
    path = os.readlink(f"/proc/self/fd/{fd}")
    if os.path.dirname(path) == sys.argv[2]:
        print("synced", path, flush=True)
        time.sleep(600)
os.fsync = held_fsync
sys.argv[0] = "mobilenets"
from mobilenets.cli import main
sys.exit(main(json.loads(sys.argv[1])))
"""


def kill_at_fsync(argv: list[str], target: Path) -> Path:
    """Runs `mobilenets ARGV` until it syncs a file in target's folder, kills it with SIGKILL there,
    and returns the synced file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AT_FSYNC, json.dumps(argv), str(target.parent)],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        said = []
        for line in proc.stdout:          # the writer's own output passes
            if line.startswith("synced "):
                break
            said.append(line)
        else:
            pytest.fail(f"{argv[0]} ended without syncing a file: {''.join(said)}")
        synced = line.removeprefix("synced ").strip()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return Path(synced)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    fmnist_checkpoint(d / "v2.safetensors")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), d / "tv.pth")
    return d


WRITERS = {
    "export onnx": ["export", "{src}/v2.safetensors", "--format", "onnx", "--out", "{out}"],
    "quantize": ["quantize", "{src}/v2.safetensors", "--out", "{out}"],
    "convert": ["convert", "{src}/tv.pth", "--from", "torchvision", "--model", "mobilenet_v3_small",
                "--out", "{out}"],
    "latency-table": ["latency-table", "--model", "{src}/v2.safetensors", "--engine", "eager",
                      "--resolution", "16", "--step", "64", "--out", "{out}"],
}
SUFFIX = {"export onnx": ".onnx", "quantize": ".onnx", "convert": ".safetensors",
          "latency-table": ".json"}


@pytest.mark.parametrize("writer", WRITERS)
def test_kill_9_while_writing_leaves_the_previous_file_whole(sources, tmp_path, writer):
    target = tmp_path / f"model{SUFFIX[writer]}"
    previous = os.urandom(50_000)          # what an earlier run left there
    target.write_bytes(previous)
    argv = [a.format(src=sources, out=target) for a in WRITERS[writer]]
    synced = kill_at_fsync(argv, target)
    # What was synced is a temporary file beside the target holding the complete new file, so a
    # rename is all that was left to do; the target itself was never opened for writing.
    assert synced.parent == tmp_path and TEMP_NAME.fullmatch(synced.name) and synced.name.startswith(f".{target.name}.")
    assert synced.stat().st_size > 0
    assert target.read_bytes() == previous
