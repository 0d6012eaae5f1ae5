"""Score files: ``ENROLL TEST SCORE [LABEL]`` one trial a line; LABEL is target/nontarget or 1/0.

Scores are written with enough digits (9 for float32, 17 otherwise) to read back every score in
the same order with the same ties, so the metrics of a written file equal those in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from speakertrip.atomic import atomic_write
from speakertrip.data.text_rows import TextRows, join_rows

SCORE_LABELS = {"target": True, "nontarget": False, "1": True, "0": False}


@dataclass(frozen=True)
class ScoreList:
    """Scored trials: ``scores`` (N,) float64 for ``enroll[i]`` against ``test[i]``; ``labels`` (N,)
    bool or None."""

    enroll: list[str]
    test: list[str]
    scores: np.ndarray
    labels: np.ndarray | None = None
    source: str | os.PathLike | None = None

    def __len__(self) -> int:
        return len(self.scores)


def read_scores(path: str | os.PathLike) -> ScoreList:
    """Read a score file; every line must have a label, or none may.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scores.txt"
    >>> _ = path.write_text("a b 0.71 target\\na c 0.12 nontarget\\n")
    >>> scored = read_scores(path)
    >>> scored.scores.tolist(), scored.labels.tolist()
    ([0.71, 0.12], [True, False])
    """
    rows = TextRows(path, "score file")
    width = len(rows.rows[0])
    if width not in (3, 4):
        raise rows.error(0, "expected 'ENROLL TEST SCORE' or 'ENROLL TEST SCORE LABEL'")
    rows.check_width(width, "ENROLL TEST SCORE LABEL" if width == 4 else "ENROLL TEST SCORE, as the first line")
    labels = rows.choice_column(3, SCORE_LABELS, "label target/nontarget or 1/0") if width == 4 else None
    return ScoreList(rows.column(0), rows.column(1), rows.float_column(2, "score"), labels, Path(path))


def format_scores(enroll: Sequence[str], test: Sequence[str], scores: np.ndarray,
                  labels: np.ndarray | None = None) -> str:
    """The text of a score file: one ``ENROLL TEST SCORE [target|nontarget]`` line per trial.

    float32 scores get 9 significant digits and others 17, so reading back keeps every order and tie.
    """
    if not len(enroll) == len(test) == len(scores) or (labels is not None and len(labels) != len(scores)):
        raise ValueError("enroll, test, scores (and labels) must have one length")
    scores = np.asarray(scores)
    digits = "%.9g" if scores.dtype == np.float32 else "%.17g"
    columns = [enroll, test, np.char.mod(digits, scores.astype(np.float64)).tolist()]
    if labels is not None:
        columns.append(np.where(np.asarray(labels, dtype=bool), "target", "nontarget").tolist())
    return join_rows(columns)


def write_scores(path: str | os.PathLike, enroll: Sequence[str], test: Sequence[str], scores: np.ndarray,
                 labels: np.ndarray | None = None) -> Path:
    """Write a score file (see :func:`format_scores`) under a temporary name, then rename; returns the path."""
    text = format_scores(enroll, test, scores, labels)
    path = Path(path)
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return path
