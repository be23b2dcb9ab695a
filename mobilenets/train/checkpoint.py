"""The run directory's durable state: last.pt (the whole training state, tensors and primitives
only, so `torch.load(weights_only=True)` reads it) written atomically, and metrics.jsonl."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from ..core.errors import MobileNetsError
from ..core.io import atomic_path, atomic_write_text

CHECKPOINT_FORMAT = "mobilenets-train/1"


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
    except Exception as e:  # torch raises many types for damaged files; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MobileNetsError(f"--resume {resume}: {path} is not a readable checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MobileNetsError(f"--resume {resume}: {path} is not a mobilenets training checkpoint")
    return path, state


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
    """Keep only the epochs the checkpoint contains (a crash can fall between the two writes)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def checkpoint_epoch(out: Path) -> str:
    try:
        return str(torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # only used to word a message
        return "?"


def plain_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
