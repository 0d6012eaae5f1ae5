"""Trial lists in three formats, detected from the first line:

- ``voxceleb``: ``LABEL ENROLL TEST`` with LABEL 1 (target) or 0 (non-target), as VoxCeleb ships;
- ``kaldi``: ``ENROLL TEST target|nontarget``;
- ``unlabeled``: ``ENROLL TEST``.

Every line must follow the format of the first; anything else is an error naming file and line.
A trial listed more than once is counted more than once by every metric, so :func:`read_trials`
warns with the count (``dedupe=True`` keeps the first of each).
"""

from __future__ import annotations

import os
import warnings
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


def read_trials(path: str | os.PathLike, format: str | None = None, dedupe: bool = False) -> Trials:
    """Read a trial list; ``format`` is detected from the first line unless given.

    Repeated trials (the same enrol and test keys again) raise a warning with their count, or with
    ``dedupe`` are dropped (the first of each is kept); repeats with different labels are an error.

    >>> import tempfile
    >>> from speakertrip.testing import make_voxceleb_tree
    >>> trials = read_trials(make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=2, sessions=1) / "veri_test2.txt")
    >>> trials.format, len(trials), trials.n_targets
    ('voxceleb', 6, 2)
    """
    rows = TextRows(path, "trial list")
    if format is None:
        format = detect_format(rows.rows[0])
        described = "; ".join(f"{name}: '{fields}'" for name, fields in FORMATS.items())
        if format is None:
            raise rows.error(0, f"not a trial list in a known format (expected {described})")
        if format == "unlabeled" and _labels_and_keys(rows.rows):
            raise rows.error(0, "two columns of a label and one key: this looks like a key list with labels, "
                                f"not a trial list, which names an enrolment and a test key per line (expected {described})")
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
    trials = Trials(enroll, test, labels, format, Path(path))
    return _without_repeats(trials, rows, dedupe)


def _labels_and_keys(rows: list[list[str]]) -> bool:
    """Is every row ``LABEL KEY`` or ``KEY LABEL`` (a label of either trial-list format beside one key)?"""
    labels = VOXCELEB_LABELS.keys() | KALDI_LABELS.keys()
    return all(len(fields) == 2 and fields[0] in labels for fields in rows) or \
        all(len(fields) == 2 and fields[1] in KALDI_LABELS for fields in rows)


def _without_repeats(trials: Trials, rows: TextRows, dedupe: bool) -> Trials:
    first: dict[tuple[str, str], int] = {}
    keep = np.ones(len(trials), dtype=bool)
    for index, pair in enumerate(zip(trials.enroll, trials.test)):
        seen = first.setdefault(pair, index)
        if seen != index:
            keep[index] = False
            if trials.labels is not None and trials.labels[seen] != trials.labels[index]:
                raise rows.error(index, f"the same trial as line {rows.line_no(seen)} with the opposite label")
    repeats = len(trials) - int(keep.sum())
    if not repeats:
        return trials
    if dedupe:
        return trials.subset(keep)
    first_repeat = int(np.flatnonzero(~keep)[0])
    warnings.warn(f"{rows.path}: {repeats} repeated trial(s) (the same enrol and test keys again, first at line "
                  f"{rows.line_no(first_repeat)}); each repeat is counted again in every metric. Remove them, or "
                  "read the list with read_trials(..., dedupe=True)", stacklevel=3)
    return trials
