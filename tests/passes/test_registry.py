"""Meta-test: every built-in pass is registered under its own name and has its three tests — a
structural, a numeric and a negative one — marked with ``@covers(name, kind=...)``."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from edgec.pm import all_passes, plugin_source
from tests.helpers import TEST_KINDS

TESTS = Path(__file__).resolve().parents[1]


def covered() -> dict[str, dict[str, list[str]]]:
    """pass name → kind → the tests marked ``@covers(pass, kind=kind)`` (read from the sources, so
    that a test only counts where the decorator really sits on a test function)."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            for decorator in node.decorator_list:
                if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "covers"):
                    continue
                kind = next(k.value.value for k in decorator.keywords if k.arg == "kind")
                for argument in decorator.args:
                    found[argument.value][kind].append(f"{path.relative_to(TESTS)}::{node.name}")
    return found


BUILTIN = sorted(name for name in all_passes() if plugin_source(name) is None)


def test_there_are_builtin_passes():
    assert {"fuse-conv-bn", "fold-constants", "eliminate-dead-code"} <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_pass_name_equals_its_registry_key(name):
    cls = all_passes()[name]
    assert cls.name == name
    assert cls.summary(), f"pass '{name}' needs a one-sentence docstring"


@pytest.mark.parametrize("name", BUILTIN)
def test_pass_has_structural_numeric_and_negative_tests(name):
    kinds = covered().get(name, {})
    missing = [kind for kind in TEST_KINDS if not kinds.get(kind)]
    assert not missing, (
        f"pass '{name}' has no {' and no '.join(missing)} test (mark it @covers('{name}', kind=...))"
    )


def test_covers_names_only_registered_passes():
    unknown = sorted(set(covered()) - set(all_passes()))
    assert not unknown, f"@covers names passes that do not exist: {unknown}"
