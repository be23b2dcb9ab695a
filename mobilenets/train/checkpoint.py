"""The run directory's durable state: last.pt (the whole training state, tensors and primitives
only, so `torch.load(weights_only=True)` reads it) written atomically, metrics.jsonl, and the
lock that keeps a second training out of a directory in use."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pickle
import re
import socket
import warnings
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from ..core.errors import MobileNetsError
from ..core.io import atomic_path, atomic_write_text

CHECKPOINT_FORMAT = "mobilenets-train/1"
LOCK_NAME = "train.lock"


def _buffer(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, state: dict) -> None:
    data = _buffer(state)  # serialise first so an error cannot leave a temp file half written
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_checkpoint(resume: str) -> tuple[Path, dict]:
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise MobileNetsError(f"--resume {resume}: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global beyond tensors and primitives; name the one it met.
        found = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        if found is None:
            raise MobileNetsError(f"--resume {resume}: {path} is not a readable checkpoint ({_first_line(e)})") from e
        raise MobileNetsError(f"--resume {resume}: {path} refused: it needs the global {found[1]}, which no "
                              "training checkpoint holds (a foreign or tampered file); not loaded") from e
    except Exception as e:  # torch raises many types for damaged files; all mean the same here
        raise MobileNetsError(f"--resume {resume}: {path} is not a readable checkpoint ({_first_line(e)})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MobileNetsError(f"--resume {resume}: {path} is not a mobilenets training checkpoint")
    return path, state


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep only the epochs the checkpoint contains (a crash can fall between the two writes);
    a line cut short by a crash or a full disk is dropped with a warning."""
    if not path.exists():
        return
    kept = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            epoch = json.loads(line)["epoch"]
            done = epoch <= epochs_done
        except (ValueError, TypeError, KeyError, IndexError):
            warnings.warn(f"{path}:{number}: dropped a line that is not a metrics record "
                          f"({line[:40]!r}); the epochs in the checkpoint are kept", stacklevel=2)
            continue
        if done:
            kept.append(line)
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def kept_checkpoint(out: Path) -> str | None:
    """out/last.pt with the position it holds, as messages name it; None when there is none."""
    path = out / "last.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch, step = state["epoch"], state["step_in_epoch"]
    except Exception:  # only used to word a message
        return str(path)
    return f"{path} (epoch {epoch})" if step == 0 else f"{path} (epoch {epoch + 1} step {step})"


def plain_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, TypeError, KeyError):
        return "holder not recorded yet"


def _lock_file(path: Path, out: Path):
    """The open lock file, exclusively locked; one line naming the holder when it is taken."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            holder = _holder(f.read())
            f.close()
            raise MobileNetsError(f"out={out} is in use by another training ({holder}); wait for it to "
                                  "finish or choose another run directory") from e
        except OSError as e:  # a file system without flock (some network mounts)
            warnings.warn(f"{path}: cannot lock ({e.strerror}); nothing keeps a second training out of {out}",
                          stacklevel=3)
            return f
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()  # the holder removed the file between our open and lock: lock the new one


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold the run directory `out` (created if missing) for one training at a time: an exclusive
    flock on out/train.lock, which records its holder for the one that is refused. The lock file
    goes when the run ends, and so does `out` if this call created it and it is still empty."""
    created = not out.exists()
    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = _lock_file(path, out)
    except OSError as e:
        raise MobileNetsError(f"out={out}: cannot create the run directory or its lock file "
                              f"({e.strerror or e})") from e
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.now().astimezone().isoformat(timespec="seconds")}) + "\n")
        f.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiting process then retries
        f.close()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
