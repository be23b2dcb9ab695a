"""V2 Figure 1: how much of a low-dimensional manifold survives ReLU in n dimensions.

A 2-D spiral x is embedded by a random matrix T (n × 2), passed through ReLU and mapped back
with the pseudo-inverse: x̂ = T⁺ ReLU(T x). In few dimensions ReLU zeroes whole coordinates for
large parts of the spiral and points collapse onto each other; in many dimensions enough
coordinates stay positive everywhere that x̂ keeps the spiral's shape.

T⁺ does not know that ReLU passes on average only half of the signal and only its positive
part, so for large n x̂ approaches x / 2 plus an offset rather than x. The paper's panels hide a
uniform scale and a shift (each is autoscaled with equal aspect); the error reported here does
the same by fitting one gain and one offset by least squares before comparing, so it measures
lost shape, not that known distortion. The raw error is kept too.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import MobileNetsError
from ..core.figures import new_figure, save_figure

DEFAULT_DIMS = (2, 3, 5, 15, 30)


def spiral(points: int = 1000, turns: float = 2.0) -> np.ndarray:
    """An Archimedean spiral centred on the origin, radius 0 → 1: shape (points, 2)."""
    t = np.linspace(0.0, 2 * np.pi * turns, points)
    r = t / t[-1]
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _check(dims, points: int, seeds: int) -> list[int]:
    dims = list(dims)
    if not dims:
        raise MobileNetsError("no dimensions given; pass --dims with integers >= 1, e.g. 2 3 5 15 30")
    for n in dims:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise MobileNetsError(f"dimension {n!r} is out of range; allowed: integer >= 1")
    if points < 2:
        raise MobileNetsError(f"points={points!r} is out of range; allowed: integer >= 2")
    if seeds < 1:
        raise MobileNetsError(f"seeds={seeds!r} is out of range; allowed: integer >= 1")
    return [int(n) for n in dims]


def _relative_error(x_hat: np.ndarray, x: np.ndarray, fit_scale: bool) -> float:
    if fit_scale:
        xc, hc = x - x.mean(0), x_hat - x_hat.mean(0)
        denom = float((hc * hc).sum())
        gain = float((hc * xc).sum()) / denom if denom > 0 else 0.0
        x_hat = gain * hc + x.mean(0)
    return float(np.linalg.norm(x_hat - x) / np.linalg.norm(x))


def reconstruct(x: np.ndarray, n: int, seed: int, relu: bool = True) -> np.ndarray:
    """x̂ = T⁺ act(T x) for a standard normal T of shape (n, 2) drawn from `seed`."""
    t = np.random.default_rng(seed).standard_normal((n, x.shape[1]))
    y = x @ t.T
    if relu:
        y = np.maximum(y, 0.0)
    return y @ np.linalg.pinv(t).T


def manifold_experiment(dims=DEFAULT_DIMS, points: int = 1000, seeds: int = 30,
                        seed: int = 0) -> dict:
    """Mean reconstruction error per n over `seeds` random T (seeded `seed`, `seed+1`, ...).

    Returns {"dims", "relu_error", "linear_error", "relu_error_raw", "points", "seeds"}:
    relu_error is the shape error (after the best gain and offset), relu_error_raw without it,
    linear_error the same pipeline without ReLU (the control: T⁺T = I for n >= 2, and for n = 1
    a line is all that survives).
    """
    dims = _check(dims, points, seeds)
    x = spiral(points)
    out = {"dims": dims, "relu_error": [], "linear_error": [], "relu_error_raw": [],
           "points": points, "seeds": seeds}
    for n in dims:
        relu = [reconstruct(x, n, seed + s) for s in range(seeds)]
        linear = [reconstruct(x, n, seed + s, relu=False) for s in range(seeds)]
        out["relu_error"].append(float(np.mean([_relative_error(r, x, True) for r in relu])))
        out["relu_error_raw"].append(float(np.mean([_relative_error(r, x, False) for r in relu])))
        out["linear_error"].append(float(np.mean([_relative_error(r, x, False) for r in linear])))
    return out


def plot_manifold(path, dims=DEFAULT_DIMS, points: int = 1000, seed: int = 0) -> None:
    """The paper's figure: the input spiral, then x̂ for each n (first seed), one panel each."""

    dims = _check(dims, points, 1)
    x = spiral(points)
    colour = np.linspace(0, 1, points)
    fig = new_figure((2.4 * (len(dims) + 1), 2.6))
    axes = fig.subplots(1, len(dims) + 1)
    panels = [("Input", x)] + [(f"Output/dim={n}", reconstruct(x, n, seed)) for n in dims]
    for ax, (title, pts) in zip(axes, panels):
        ax.scatter(pts[:, 0], pts[:, 1], c=colour, cmap="viridis", s=3)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("x̂ = T⁺ ReLU(T x), spiral embedded in n dimensions (MobileNetV2 Fig. 1)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
