"""DET curves: the points (P_fa, P_miss) of every operating point, and PNG plots on probit axes
with the EER and minDCF operating points marked; several systems share one plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from speakertrip.scoring.metrics import eer_from_points, min_dcf_from_points
from speakertrip.scoring.operating_points import OperatingPoints, operating_points

TICKS = np.array([0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99])
UPPER_RATE = 0.6  # axes end here, past the 50 % of a system that guesses
_PLOT_GRID = 4000  # points closer than 1/4000 of the axis span are drawn once


def det_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p_fa, p_miss)``, each (G + 1,), in order of increasing threshold; fractions.

    >>> det_points(np.array([0.1, 0.4, 0.4, 0.9]), np.array([0, 1, 0, 1]))
    (array([1. , 0.5, 0. , 0. ]), array([0. , 0. , 0.5, 1. ]))
    """
    points = operating_points(scores, labels)
    return points.p_fa, points.p_miss


def _probit(rates: np.ndarray, low: float) -> np.ndarray:
    from scipy.stats import norm

    return norm.ppf(np.clip(rates, low, 1 - low))


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop consecutive points that fall in the same cell of a fine grid (the curve looks the same)."""
    span = lambda v: (v - v.min()) / max(np.ptp(v), 1e-12)  # noqa: E731
    cells_x, cells_y = np.floor(span(x) * _PLOT_GRID), np.floor(span(y) * _PLOT_GRID)
    keep = np.concatenate(([True], (cells_x[1:] != cells_x[:-1]) | (cells_y[1:] != cells_y[:-1])))
    keep[-1] = True
    return x[keep], y[keep]


def plot_det(systems: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
             p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0, title: str | None = None) -> Path:
    """Plot the DET curve of each named system ``{name: (scores (N,), labels (N,))}`` into a PNG.

    The EER point is marked with a circle and the minDCF point at ``p_target`` with a square.

    >>> import tempfile
    >>> rng = np.random.default_rng(0)
    >>> labels = np.arange(200) % 2 == 0
    >>> scores = rng.normal(labels * 2.0, 1.0)
    >>> plot_det({"cosine": (scores, labels)}, tempfile.mkdtemp() + "/det.png").suffix
    '.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: operating_points(scores, labels) for name, (scores, labels) in systems.items()}
    smallest = min(1.0 / max(p.n_targets, p.n_nontargets) for p in curves.values())
    low = TICKS[TICKS <= smallest].max(initial=min(smallest, TICKS[0]))  # the tick below the finest rate
    figure, axes = plt.subplots(figsize=(5.5, 5.5))
    for name, points in curves.items():
        x, y = _thin(_probit(points.p_fa, low), _probit(points.p_miss, low))
        eer = eer_from_points(points)[0]
        (line,) = axes.plot(x, y, label=f"{name} (EER {100 * eer:.2f} %)", linewidth=1.4)
        _mark_min_dcf(axes, points, p_target, c_miss, c_fa, low, line.get_color())
        axes.plot(_probit(np.array([eer]), low), _probit(np.array([eer]), low), "o", color=line.get_color(),
                  markerfacecolor="none")
    shown = TICKS[(TICKS >= low) & (TICKS <= UPPER_RATE)]
    labels = [f"{100 * t:g}" for t in shown]
    for set_ticks, set_labels, set_lim in ((axes.set_xticks, axes.set_xticklabels, axes.set_xlim),
                                           (axes.set_yticks, axes.set_yticklabels, axes.set_ylim)):
        set_ticks(_probit(shown, low))
        set_labels(labels)
        set_lim(_probit(np.array([low, UPPER_RATE]), low))
    axes.plot(*(_probit(np.array([low, UPPER_RATE]), low),) * 2, ":", color="grey", linewidth=0.8)
    axes.set_xlabel("false-alarm rate (%)")
    axes.set_ylabel("miss rate (%)")
    axes.set_title(title or f"DET (○ EER, □ minDCF at P_target {p_target:g})")
    axes.grid(True, linewidth=0.4, alpha=0.6)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _mark_min_dcf(axes, points: OperatingPoints, p_target: float, c_miss: float, c_fa: float, low: float,
                  color: str) -> None:
    _, threshold = min_dcf_from_points(points, p_target, c_miss, c_fa)
    where = int(np.searchsorted(points.thresholds, threshold))
    axes.plot(_probit(points.p_fa[where:where + 1], low), _probit(points.p_miss[where:where + 1], low), "s",
              color=color, markerfacecolor="none")
