"""One checker for every option users write: config sections, encoder options, losses and miners.

Names are checked against a dataclass's fields or a factory's signature (unknown and missing
names fail, listing the valid ones); values against the type annotation (``bool`` is never an
``int``; ``int`` widens to ``float``; lists become tuples where a tuple is expected).

>>> def build(width: int = 4, scale: float = 1.0): return width, scale
>>> construct(build, {"width": 8, "scale": 2}, "encoder 'tiny'")
(8, 2.0)
>>> construct(build, {"width": True}, "encoder 'tiny'")
Traceback (most recent call last):
...
speakertrip.errors.ConfigError: encoder 'tiny': key 'width' must be int, got bool True
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from speakertrip.errors import ConfigError


def describe(kind: Any) -> str:
    """An annotation as people read it: ``int or None``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(describe(argument) for argument in typing.get_args(kind))
    if typing.get_origin(kind) is typing.Literal:
        return " or ".join(map(repr, typing.get_args(kind)))
    return "None" if kind is type(None) else getattr(kind, "__name__", str(kind))


def convert(value: Any, kind: Any, key: str, source: str) -> Any:
    """``value`` checked against the annotation ``kind``; ints widen to float, lists become tuples.

    A dataclass annotation builds that dataclass from a mapping (:func:`build_dataclass`).
    """
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(kind)
        if value is None and type(None) in arguments:
            return None
        concrete = [argument for argument in arguments if argument is not type(None)]
        if len(concrete) == 1 and dataclasses.is_dataclass(concrete[0]) and value is not None:
            return convert(value, concrete[0], key, source)  # a section: its own errors name the inner key
        for argument in concrete:
            try:
                return convert(value, argument, key, source)
            except ConfigError:
                continue
    elif origin is typing.Literal:
        if value in typing.get_args(kind):
            return value
        raise ConfigError(f"{source}: key {key!r} must be one of {', '.join(map(str, typing.get_args(kind)))}, "
                          f"not {value!r}")
    elif dataclasses.is_dataclass(kind):
        return build_dataclass(kind, value, source, key + ".")
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    elif origin is not None:  # Mapping[str, float], list[int] and the like
        if isinstance(value, origin):
            return value
    elif isinstance(kind, type) and isinstance(value, kind):  # str, bool, dict, a class such as Miner
        return value
    raise ConfigError(f"{source}: key {key!r} must be {describe(kind)}, got {type(value).__name__} {value!r}")


def build_dataclass(cls: type, values: Any, source: str, prefix: str = "") -> Any:
    """``cls(**values)`` with every key and value checked against the fields' annotations."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: section {prefix.rstrip('.') or '(top level)'!r} must be a mapping, "
                          f"got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + str(name) for name in unknown)}; "
                          f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}")
    converted = {}
    for name, value in values.items():
        key = prefix + name
        converted[name] = convert(value, hints[name], key, source)
    try:
        return cls(**converted)
    except ConfigError as error:
        raise ConfigError(f"{source}: section {prefix.rstrip('.')!r}: {error}") from None


def construct(factory: Callable, options: Mapping[str, Any], what: str) -> Any:
    """``factory(**options)`` after checking the names against its signature and the values against its
    annotations; errors start with ``what`` (``"loss 'triplet'"``)."""
    signature = inspect.signature(factory)
    parameters = {name: p for name, p in signature.parameters.items()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ConfigError(f"{what}: unknown option {', '.join(map(repr, unknown))}; "
                          f"valid options: {', '.join(parameters)}")
    missing = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty and name not in options]
    if missing:
        raise ConfigError(f"{what}: missing option {', '.join(map(repr, missing))}")
    hints = _hints(factory)
    checked = {name: convert(value, hints[name], name, what) if name in hints else value
               for name, value in options.items()}
    return factory(**checked)


def check_count(value: Any, what: str, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` if it is an integer (not a bool) >= ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"{'None or ' if optional else ''}an integer >= {minimum}"
        raise ConfigError(f"{what} must be {allowed}, got {value!r}")
    return value


def _hints(factory: Callable) -> dict[str, Any]:
    """The resolved annotations of a function, a class's ``__init__`` or a ``functools.partial``."""
    target = getattr(factory, "func", factory)
    target = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that cannot be resolved: names are still checked
        return {}
