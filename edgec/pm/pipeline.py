"""The pipeline-string grammar, shared by the CLI, config files and Python.

    pipeline := item ("," item)*
    item     := NAME ["{" option ("," option)* "}"]
    option   := KEY "=" VALUE          (lists: a:b:c)

``NAME`` is a registered pass or a named pipeline (``default``); option values are converted to
the type of the pass's dataclass field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from edgec.errors import EdgecError
from edgec.pm.base import Pass
from edgec.pm.registry import all_pipelines, get_pass


@dataclass(frozen=True)
class FixedPoint:
    """Passes run in order, again and again, until none changes the graph (or ``limit`` rounds)."""

    name: str
    passes: tuple[Pass, ...]
    limit: int = 8


Step = Pass | FixedPoint


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise EdgecError(f"bad pipeline '{text}': unbalanced '}}'")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise EdgecError(f"bad pipeline '{text}': unbalanced '{{'")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _convert(raw: str, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(raw, arg, where)
            except EdgecError as exc:
                errors.append(str(exc))
        raise EdgecError(errors[0] if errors else f"{where}: cannot parse '{raw}'")
    if origin is Literal:
        choices = [str(a) for a in args]
        if raw not in choices:
            raise EdgecError(f"{where}: '{raw}' is not one of {', '.join(choices)}")
        return args[choices.index(raw)]
    if origin in (tuple, list):
        item_type = args[0] if args else str
        return tuple(_convert(part, item_type, where) for part in raw.split(":") if part)
    if annotation is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise EdgecError(f"{where}: '{raw}' is not a boolean (true/false)")
    if annotation in (int, float):
        try:
            return annotation(raw)
        except ValueError:
            raise EdgecError(
                f"{where}: '{raw}' is not a{'n' if annotation is int else ''} {annotation.__name__}"
            ) from None
    if annotation is str:
        return raw.strip("'\"")
    raise EdgecError(f"{where}: options of type {annotation} cannot be set from text")


def make_pass(name: str, options: dict[str, str]) -> Pass:
    """Instantiates a registered pass from textual options, converting each to its field type."""
    cls = get_pass(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in options.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise EdgecError(f"pass '{name}' has no option '{key}'; its options: {known}")
        values[key] = _convert(raw, hints[key], f"option {name}{{{key}}}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise EdgecError(f"pass '{name}': {exc}") from None


def _parse_item(item: str) -> tuple[str, dict[str, str]]:
    if "{" not in item:
        return item, {}
    if not item.endswith("}"):
        raise EdgecError(f"bad pipeline item '{item}': options go in braces at the end")
    name, _, body = item[:-1].partition("{")
    options = {}
    for option in _split_top_level(body):
        if not option:
            continue
        key, sep, value = option.partition("=")
        if not sep:
            raise EdgecError(f"bad option '{option}' in '{item}': write key=value")
        options[key.strip()] = value.strip()
    return name.strip(), options


def parse_pipeline(text: str) -> list[Step]:
    """Parses a pipeline string into pass instances and fixed-point groups."""
    steps: list[Step] = []
    if not text.strip():
        return steps
    pipelines = all_pipelines()
    for item in _split_top_level(text):
        if not item:
            raise EdgecError(f"bad pipeline '{text}': empty item")
        name, options = _parse_item(item)
        if name in pipelines:
            if options:
                raise EdgecError(f"named pipeline '{name}' takes no options")
            named = pipelines[name]
            inner = tuple(parse_pipeline(named.pipeline))
            if named.fixed_point:
                steps.append(FixedPoint(name, tuple(p for p in inner if isinstance(p, Pass))))
            else:
                steps.extend(inner)
        else:
            steps.append(make_pass(name, options))
    return steps


def format_pipeline(steps: list[Step]) -> str:
    """The canonical pipeline string of parsed steps (named groups keep their name)."""
    return ",".join(step.name if isinstance(step, FixedPoint) else step.spec() for step in steps)
