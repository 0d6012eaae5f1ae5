"""Plain-text tables for what commands print: name/value summaries and column tables."""

from __future__ import annotations

from typing import Sequence


def format_fields(rows: Sequence[tuple[str, object]]) -> str:
    """``name  value`` lines, names padded to one width.

    >>> print(format_fields([("steps", 500), ("final loss", "0.0083")]))
    steps       500
    final loss  0.0083
    """
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell (header included), two spaces apart; ``right``: the indices of
    columns aligned right (numbers).

    >>> print(format_table(["set", "speakers"], [["train", 200], ["test", 20]], right=[1]))
    set    speakers
    train       200
    test         20
    """
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in cells)
