"""YAML files we write for people: plain data only (no Python tags), replaced atomically."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from speakertrip.atomic import atomic_write


def plain_data(value: Any) -> Any:
    """Dataclasses, mappings, tuples and numpy/torch scalars → the plain values ``yaml.safe_dump`` writes.

    >>> import numpy as np
    >>> plain_data({"rate": np.float32(0.5), "sizes": (1, 2)})
    {'rate': 0.5, 'sizes': [1, 2]}
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: plain_data(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if not isinstance(value, (str, bytes, int, float, bool)) and callable(getattr(value, "item", None)):
        return value.item()  # a numpy or torch scalar
    return value


def write_yaml(value: Any, path: str | os.PathLike) -> Path:
    """Write ``plain_data(value)`` as block YAML in key order, atomically; returns the path."""
    path = Path(path)
    text = yaml.safe_dump(plain_data(value), sort_keys=False)
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return path
