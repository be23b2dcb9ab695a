"""Matplotlib figures written the project's way: `matplotlib.figure.Figure` objects (no pyplot, so
no global figure registry and no change to a notebook's backend), an atomic write, and a one-line
error for a file name matplotlib cannot encode."""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from .errors import MobileNetsError
from .io import atomic_path


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure that belongs to no backend's window manager; `fig.subplots(...)` adds axes."""
    return Figure(figsize=figsize)


def check_figure_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = path.suffix.lstrip(".").lower()
    if ext not in formats:
        raise MobileNetsError(f"{path}: cannot write a figure with extension {path.suffix or '(none)'!r}; "
                              f"allowed: {', '.join('.' + f for f in sorted(formats))}")
    return path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    path = check_figure_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=dpi, bbox_inches="tight")
