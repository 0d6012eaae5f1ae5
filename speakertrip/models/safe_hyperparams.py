"""Read a SpeechBrain ``hyperparams.yaml`` as data, never as code.

SpeechBrain loads these files with HyperPyYAML, which builds objects while parsing (``!new:``),
imports modules (``!module:``, ``!name:``) and calls functions (``!apply:``): a hyperparams
file from the internet can run anything. Here the same tags become inert placeholders
(:class:`Tagged`, :class:`Ref`) that the importer interprets by name against an allow-list;
``!apply:``, ``!include:`` and PyYAML's ``!!python/...`` tags are refused.

>>> text = "n_mels: 80\\nfeatures: !new:speechbrain.lobes.features.Fbank\\n    n_mels: !ref <n_mels>\\n"
>>> hparams = read_hyperparams(text)
>>> hparams["features"].target, resolve(hparams["features"].value, hparams)
('speechbrain.lobes.features.Fbank', {'n_mels': 80})
"""

from __future__ import annotations

import ast
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


def read_hyperparams(text: str, source: str | Path = "hyperparams.yaml") -> dict[str, Any]:
    """Parse hyperparams text into plain values, :class:`Tagged` and :class:`Ref`; FormatError naming ``source``."""
    try:
        values = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except FormatError as error:
        raise FormatError(str(error), source) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise FormatError(f"{where}invalid hyperparams YAML: {getattr(error, 'problem', None) or error}",
                          source) from None
    if not isinstance(values, dict):
        raise FormatError("expected a mapping of names to settings", source)
    return values


def resolve(value: Any, hparams: dict[str, Any], depth: int = 0) -> Any:
    """``value`` with every :class:`Ref` inside replaced by what it names (``<a[b]>`` reaches into mappings).

    A reference alone yields the object; mixed with text it yields a string; number arithmetic
    (``<n> * 2``) is evaluated without ``eval``.
    """
    if depth > 20:
        raise FormatError("references nest too deeply (a cycle?)")
    if isinstance(value, Ref):
        return _resolve_reference(value.expression.strip(), hparams, depth)
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, resolve(value.value, hparams, depth))
    if isinstance(value, dict):
        return {key: resolve(item, hparams, depth) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, hparams, depth) for item in value]
    return value


def _lookup(name: str, hparams: dict[str, Any], depth: int) -> Any:
    keys = re.findall(r"[^\[\]]+", name)
    found: Any = hparams
    for key in keys:
        if not isinstance(found, dict) or key not in found:
            raise FormatError(f"reference <{name}> names nothing in the file")
        found = found[key]
    return resolve(found, hparams, depth + 1)


def _resolve_reference(expression: str, hparams: dict[str, Any], depth: int) -> Any:
    whole = REFERENCE.fullmatch(expression)
    if whole:
        return _lookup(whole.group(1), hparams, depth)
    text = REFERENCE.sub(lambda match: str(_lookup(match.group(1), hparams, depth)), expression)
    try:
        return _arithmetic(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError):
        return text


def _arithmetic(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        return ARITHMETIC[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in ARITHMETIC:
        return ARITHMETIC[type(node.op)](_arithmetic(node.operand))
    raise ValueError("not arithmetic")
