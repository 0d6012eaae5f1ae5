"""Trial lists in three formats, detected from the first line:

- ``voxceleb``: ``LABEL ENROLL TEST`` with LABEL 1 (target) or 0 (non-target), as VoxCeleb ships;
- ``kaldi``: ``ENROLL TEST target|nontarget``;
- ``unlabeled``: ``ENROLL TEST``.

Every line must follow the format of the first; anything else is an error naming file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speakertrip.errors import FormatError
from speakertrip.data.text_rows import TextRows

FORMATS = {
    "voxceleb": "LABEL ENROLL TEST with LABEL 1 or 0",
    "kaldi": "ENROLL TEST target|nontarget",
    "unlabeled": "ENROLL TEST",
}
VOXCELEB_LABELS = {"1": True, "0": False}
KALDI_LABELS = {"target": True, "nontarget": False}


@dataclass(frozen=True)
class Trials:
    """Pairs to score: ``enroll[i]`` against ``test[i]``; ``labels`` (N,) bool (True = same
    speaker) or None for an unlabeled list."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray | None = None
    format: str = "unlabeled"
    source: str | os.PathLike | None = None

    def __len__(self) -> int:
        return len(self.enroll)

    @property
    def n_targets(self) -> int | None:
        return None if self.labels is None else int(np.count_nonzero(self.labels))

    def subset(self, keep: np.ndarray) -> Trials:
        """The trials where ``keep`` (N,) bool is True, in order."""
        rows = np.flatnonzero(keep)
        return Trials([self.enroll[i] for i in rows], [self.test[i] for i in rows],
                      None if self.labels is None else self.labels[rows], self.format, self.source)


def detect_format(fields: list[str]) -> str | None:
    """The trial-list format of one line's fields, or None if it fits none."""
    if len(fields) == 3 and fields[2] in KALDI_LABELS:
        return "kaldi"
    if len(fields) == 3 and fields[0] in VOXCELEB_LABELS:
        return "voxceleb"
    return "unlabeled" if len(fields) == 2 else None


def read_trials(path: str | os.PathLike, format: str | None = None) -> Trials:
    """Read a trial list; ``format`` is detected from the first line unless given.

    >>> import tempfile
    >>> from speakertrip.testing import make_voxceleb_tree
    >>> trials = read_trials(make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=2, sessions=1) / "veri_test2.txt")
    >>> trials.format, len(trials), trials.n_targets
    ('voxceleb', 6, 2)
    """
    rows = TextRows(path, "trial list")
    if format is None:
        format = detect_format(rows.rows[0])
        if format is None:
            described = "; ".join(f"{name}: '{fields}'" for name, fields in FORMATS.items())
            raise rows.error(0, f"not a trial list in a known format (expected {described})")
    elif format not in FORMATS:
        raise FormatError(f"unknown trial-list format {format!r}; valid formats: {', '.join(FORMATS)}", path)
    rows.check_width(2 if format == "unlabeled" else 3, f"{format} trial list: {FORMATS[format]}")
    if format == "voxceleb":
        labels = rows.choice_column(0, VOXCELEB_LABELS, "label 1 or 0 first (VoxCeleb trial list)")
        enroll, test = rows.column(1), rows.column(2)
    else:
        enroll, test = rows.column(0), rows.column(1)
        labels = rows.choice_column(2, KALDI_LABELS, "'target' or 'nontarget' third (Kaldi trial list)") \
            if format == "kaldi" else None
    return Trials(enroll, test, labels, format, Path(path))
