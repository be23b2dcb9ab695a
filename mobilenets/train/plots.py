"""The training curve figure."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.figures import new_figure, save_figure


def plot_curves(metrics_path: Path, png: Path, keys=("train_top1", "val_top1")) -> None:
    """Losses on the left, the metrics.jsonl entries `keys` on the right."""
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig = new_figure((10, 4))
    a, b = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        if key in rows[0]:
            a.plot(ep, [r[key] for r in rows], "o-", label=key.removesuffix("_loss"))
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    for key in keys:
        b.plot(ep, [r[key] for r in rows], "o-", label=key.replace("_", " "))
    b.set_xlabel("epoch"), b.set_ylabel("score"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png, dpi=100)
