"""Read a SpeechBrain ``hyperparams.yaml`` as data, never as code.

SpeechBrain loads these files with HyperPyYAML, which builds objects while parsing (``!new:``),
imports modules (``!module:``, ``!name:``) and calls functions (``!apply:``): a hyperparams
file from the internet can run anything. Here the same tags become inert placeholders
(:class:`Tagged`, :class:`Ref`) that the importer interprets by name against an allow-list;
``!apply:``, ``!include:`` and PyYAML's ``!!python/...`` tags are refused.

A hostile file cannot make reading it slow or large either: the file is at most
:data:`MAX_FILE_BYTES`, its nesting at most :data:`MAX_DEPTH` levels, resolving references and aliases
visits at most :data:`MAX_VALUES` values and builds at most :data:`MAX_TEXT` characters, and
arithmetic stays within :data:`MAX_NUMBER` (``9 ** 9 ** 9`` is refused before it is computed).

>>> text = "n_mels: 80\\nfeatures: !new:speechbrain.lobes.features.Fbank\\n    n_mels: !ref <n_mels>\\n"
>>> hparams = read_hyperparams(text)
>>> hparams["features"].target, resolve(hparams["features"].value, hparams)
('speechbrain.lobes.features.Fbank', {'n_mels': 80})
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from speakertrip.errors import FormatError

REFUSED = {"!apply:": "calls a Python function while loading", "!include:": "reads another file",
           "tag:yaml.org,2002:python/": "builds a Python object"}
REFERENCE = re.compile(r"<([^<>]+)>")
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.USub: operator.neg}
MAX_FILE_BYTES = 1 << 20  # SpeechBrain's speaker hyperparams are about 5 KB
MAX_DEPTH = 50  # nesting of mappings and lists, and of references within references
MAX_VALUES = 100_000  # values visited while resolving references (aliases are expanded into copies)
MAX_TEXT = 1_000_000  # characters of text built from references
MAX_NUMBER = 2.0 ** 63  # magnitude of any intermediate arithmetic result


@dataclass(frozen=True)
class Tagged:
    """``!new:target`` / ``!name:target`` / ``!module:target`` with its (unresolved) arguments."""

    kind: str
    target: str
    value: Any


@dataclass(frozen=True)
class Ref:
    """``!ref <key>`` (or ``!copy``): an expression over other keys, such as ``<pretrained_path>/x.ckpt``."""

    expression: str


class _Loader(yaml.SafeLoader):
    """SafeLoader that turns HyperPyYAML tags into placeholders and refuses the ones that run code."""


def _refuse(prefix: str):
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> Any:
        raise FormatError(f"line {node.start_mark.line + 1}: tag {node.tag!r} {REFUSED[prefix]}: refused "
                          "(speakertrip reads a hyperparams file as data and never runs its code)")
    return construct


def _tagged(kind: str):
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> Tagged:
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node) or {}
        return Tagged(kind, suffix, value)
    return construct


for _prefix in REFUSED:
    _Loader.add_multi_constructor(_prefix, _refuse(_prefix))
for _kind in ("new", "name", "module"):
    _Loader.add_multi_constructor(f"!{_kind}:", _tagged(_kind))
_Loader.add_constructor("!ref", lambda loader, node: Ref(loader.construct_scalar(node)))
_Loader.add_constructor("!copy", lambda loader, node: Ref(loader.construct_scalar(node)))
_Loader.add_constructor("!tuple", lambda loader, node: Tagged("tuple", "", loader.construct_scalar(node)))
_Loader.add_constructor("!PLACEHOLDER", lambda loader, node: Tagged("placeholder", "", None))


def read_hyperparams_file(path: str | Path) -> dict[str, Any]:
    """:func:`read_hyperparams` of the file ``path`` (UTF-8, at most MAX_FILE_BYTES); FormatError naming it."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise FormatError(f"{size} bytes is over the {MAX_FILE_BYTES} a hyperparams file may have "
                          "(SpeechBrain's are a few KB)", path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise FormatError(f"line {line}: not UTF-8 text (byte {error.object[error.start]:#x} at offset "
                          f"{error.start})", path) from None
    return read_hyperparams(text, path)


def read_hyperparams(text: str, source: str | Path = "hyperparams.yaml") -> dict[str, Any]:
    """Parse hyperparams text into plain values, :class:`Tagged` and :class:`Ref`; FormatError naming ``source``."""
    if len(text) > MAX_FILE_BYTES:
        raise FormatError(f"{len(text)} characters is over the {MAX_FILE_BYTES} a hyperparams file may have", source)
    try:
        values = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        _check_depth(values, source)
    except FormatError as error:
        raise FormatError(str(error), source) from None
    except RecursionError:
        raise FormatError(f"nests too deeply (at most {MAX_DEPTH} levels)", source) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise FormatError(f"{where}invalid hyperparams YAML: {getattr(error, 'problem', None) or error}",
                          source) from None
    if not isinstance(values, dict):
        raise FormatError("expected a mapping of names to settings", source)
    return values


def _check_depth(value: Any, source: str | Path) -> None:
    """FormatError when mappings and lists nest deeper than MAX_DEPTH (iterative: aliases are visited once)."""
    pending, seen = [(value, 0)], set()
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else \
            [item.value] if isinstance(item, Tagged) else None
        if children is None or id(item) in seen:
            continue
        if depth >= MAX_DEPTH:
            raise FormatError(f"nests too deeply (at most {MAX_DEPTH} levels)", source)
        seen.add(id(item))
        pending.extend((child, depth + 1) for child in children)


@dataclass
class _Budget:
    """What resolving may still visit and build; FormatError once either runs out."""

    values: int = MAX_VALUES
    text: int = MAX_TEXT

    def spend(self, values: int = 1, text: int = 0) -> None:
        self.values -= values
        self.text -= text
        if self.values < 0 or self.text < 0:
            raise FormatError(f"references and aliases expand to more than {MAX_VALUES} values or {MAX_TEXT} "
                              "characters (an alias or reference bomb?)")


def resolve(value: Any, hparams: dict[str, Any], depth: int = 0, budget: _Budget | None = None) -> Any:
    """``value`` with every :class:`Ref` inside replaced by what it names (``<a[b]>`` reaches into mappings).

    A reference alone yields the object; mixed with text it yields a string; number arithmetic
    (``<n> * 2``) is evaluated without ``eval``. FormatError when the expansion exceeds the bounds of
    the module docstring.
    """
    budget = budget or _Budget()
    budget.spend()
    if depth > MAX_DEPTH:
        raise FormatError("references nest too deeply (a cycle?)")
    if isinstance(value, Ref):
        return _resolve_reference(value.expression.strip(), hparams, depth, budget)
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, resolve(value.value, hparams, depth + 1, budget))
    if isinstance(value, dict):
        return {key: resolve(item, hparams, depth + 1, budget) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, hparams, depth + 1, budget) for item in value]
    if isinstance(value, str):
        budget.spend(0, len(value))
    return value


def _lookup(name: str, hparams: dict[str, Any], depth: int, budget: _Budget) -> Any:
    keys = re.findall(r"[^\[\]]+", name)
    found: Any = hparams
    for key in keys:
        if not isinstance(found, dict) or key not in found:
            raise FormatError(f"reference <{name}> names nothing in the file")
        found = found[key]
    return resolve(found, hparams, depth + 1, budget)


def _resolve_reference(expression: str, hparams: dict[str, Any], depth: int, budget: _Budget) -> Any:
    budget.spend(0, len(expression))
    whole = REFERENCE.fullmatch(expression)
    if whole:
        return _lookup(whole.group(1), hparams, depth, budget)

    def text_of(match: re.Match) -> str:
        text = str(_lookup(match.group(1), hparams, depth, budget))
        budget.spend(0, len(text))
        return text

    text = REFERENCE.sub(text_of, expression)
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return text
    try:
        return _arithmetic(tree)
    except _NotArithmetic:
        return text


class _NotArithmetic(Exception):
    """The expression is text, not number arithmetic."""


def _arithmetic(node: ast.AST, depth: int = 0) -> float | int:
    """The value of a number expression; FormatError when a result would pass MAX_NUMBER (checked before
    a power is computed), _NotArithmetic when ``node`` is not arithmetic."""
    if depth > MAX_DEPTH:
        raise FormatError(f"arithmetic nests more than {MAX_DEPTH} levels")
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = _arithmetic(node.left, depth + 1), _arithmetic(node.right, depth + 1)
        if isinstance(node.op, ast.Pow) and abs(left) > 1 and right * math.log2(abs(left)) > math.log2(MAX_NUMBER):
            raise FormatError(f"{left} ** {right} is over the bound of {MAX_NUMBER:g} on hyperparams arithmetic")
        try:
            return _bounded(ARITHMETIC[type(node.op)](left, right))
        except (ZeroDivisionError, OverflowError, TypeError) as error:
            raise FormatError(f"arithmetic in a reference failed: {error}") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in ARITHMETIC:
        return ARITHMETIC[type(node.op)](_arithmetic(node.operand, depth + 1))
    raise _NotArithmetic


def _bounded(value: Any) -> float | int:
    if isinstance(value, complex) or not abs(value) <= MAX_NUMBER:
        raise FormatError(f"a number in a reference is over the bound of {MAX_NUMBER:g} (or not a real number)")
    return value
