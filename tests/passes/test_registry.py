"""Meta-test: every built-in pass is registered under its own name and has tests that name it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgec.pm import all_passes, plugin_source

TESTS = Path(__file__).resolve().parents[1]


def _test_sources() -> str:
    return "\n".join(path.read_text() for path in sorted(TESTS.rglob("test_*.py")))


BUILTIN = sorted(name for name in all_passes() if plugin_source(name) is None)


def test_there_are_builtin_passes():
    assert {"fuse-conv-bn", "fold-constants", "eliminate-dead-code"} <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_pass_name_equals_its_registry_key(name):
    cls = all_passes()[name]
    assert cls.name == name
    assert cls.summary(), f"pass '{name}' needs a one-sentence docstring"


@pytest.mark.parametrize("name", BUILTIN)
def test_pass_has_a_test_module_that_names_it(name):
    # The whole name: 'fuse-conv-bn' inside 'fuse-conv-bn-relu' does not count.
    whole_name = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    assert whole_name.search(_test_sources()), f"no test in tests/ mentions pass '{name}'"
