"""Matplotlib figures written the project's way: headless backend, atomic write, and a one-line
error for a file name matplotlib cannot encode."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MobileNetsError


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on servers and CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_figure_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    ext = path.suffix.lstrip(".").lower()
    if ext not in formats:
        raise MobileNetsError(f"{path}: cannot write a figure with extension {path.suffix or '(none)'!r}; "
                              f"allowed: {', '.join('.' + f for f in sorted(formats))}")
    return path


def save_figure(fig, path: str | os.PathLike) -> None:
    from .io import atomic_path
    path = check_figure_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=120, bbox_inches="tight")
    pyplot().close(fig)
