"""Whitespace-separated text tables (trial lists, score files) read fast, with file:line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from speakertrip.errors import FormatError


class TextRows:
    """The non-blank lines of a text file split on whitespace; blank lines and a UTF-8 byte-order mark
    (as Windows editors write) are skipped.

    ``rows[i]`` is the list of fields of the i-th non-blank line, found at ``line_no(i)``.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise FormatError(f"no such {what}", self.path) from None
        except (UnicodeDecodeError, IsADirectoryError) as error:
            raise FormatError(f"not a text {what} ({error})", self.path) from None
        self.lines = text.splitlines()
        rows = [line.split() for line in self.lines]
        self._numbers = [i for i, fields in enumerate(rows, 1) if fields]
        self.rows = [fields for fields in rows if fields] if len(self._numbers) < len(rows) else rows
        if not self.rows:
            raise FormatError(f"empty {what}: no lines to read", self.path)

    def __len__(self) -> int:
        return len(self.rows)

    def line_no(self, index: int) -> int:
        return self._numbers[index]

    def error(self, index: int, message: str) -> FormatError:
        """A FormatError pointing at row ``index``: ``path:line: message (line: '...')``."""
        number = self.line_no(index)
        return FormatError(message, self.path, number, self.lines[number - 1])

    def check_width(self, width: int, expected: str) -> None:
        """Every row must have ``width`` fields; ``expected`` describes the format in the error."""
        bad = next((i for i, fields in enumerate(self.rows) if len(fields) != width), None)
        if bad is not None:
            raise self.error(bad, f"expected {width} fields ({expected}), got {len(self.rows[bad])}")

    def column(self, index: int) -> list[str]:
        return [fields[index] for fields in self.rows]

    def choice_column(self, index: int, meanings: dict[str, bool], expected: str) -> np.ndarray:
        """Column ``index`` mapped through ``meanings`` (e.g. ``{"target": True, ...}``) to a bool array."""
        values = self.column(index)
        try:
            return np.fromiter((meanings[value] for value in values), dtype=bool, count=len(values))
        except KeyError:
            bad = next(i for i, value in enumerate(values) if value not in meanings)
            raise self.error(bad, f"expected {expected}, got {values[bad]!r}") from None

    def float_column(self, index: int, name: str) -> np.ndarray:
        """Column ``index`` as float64; a non-number, NaN or infinity is an error naming its line."""
        values = self.column(index)
        try:
            numbers = np.array(values, dtype=np.float64)
        except ValueError:
            numbers = np.array([_to_float(value) for value in values])
        bad = np.flatnonzero(~np.isfinite(numbers))
        if len(bad):
            raise self.error(int(bad[0]), f"{name} must be a finite number, got {values[bad[0]]!r} "
                                          f"({len(bad)} such lines in the file)")
        return numbers


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def join_rows(columns: Sequence[Sequence[str]]) -> str:
    """Lines of space-separated fields, one per row, each ending in a newline."""
    return "".join(" ".join(fields) + "\n" for fields in zip(*columns))
