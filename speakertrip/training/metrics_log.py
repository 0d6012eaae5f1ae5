"""The experiment's metrics: one JSON object a line in ``metrics.jsonl``, and ``curves.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL log of ``{"kind": "step"|"epoch"|"validation", "step": ..., ...}`` records.

    ``MetricsLog(path, resume_step=s)`` drops records after step ``s`` (a resumed run repeats them).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record: Any) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss, active-triplet fraction, learning rate and dev EER against the step; None when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    checks = [r for r in records if r.get("kind") == "validation" and r.get("eer") is not None]
    if not steps:
        return None
    panels = [("loss", "loss"), ("active_fraction", "active fraction"), ("lr", "learning rate")]
    panels = [(key, title) for key, title in panels if any(key in r for r in steps)]
    figure, axes = plt.subplots(1, len(panels) + bool(checks), figsize=(4 * (len(panels) + bool(checks)), 3.2))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for axis, (key, title) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in steps if key in r and r[key] is not None and math.isfinite(r[key])]
        axis.plot(*zip(*points)) if points else None
        axis.set_title(title)
        axis.set_xlabel("step")
    if checks:
        axis = axes[-1]
        axis.plot([r["step"] for r in checks], [100 * r["eer"] for r in checks], marker="o")
        axis.set_title("dev EER (%)")
        axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
