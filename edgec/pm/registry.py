"""The one registry of passes and named pipelines, with plugin discovery.

Built-in passes live in ``edgec.passes`` (every module of it is imported on first use);
other packages contribute passes through the entry-point group ``edgec.passes``: each entry point
names a module (or a callable) whose import registers its passes with ``@register``. edgec's own
targets use the same group for their legalization passes (``edgec.targets.legalize``); passes
from the ``edgec`` distribution itself count as built-in, not as plugins.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

from edgec.errors import EdgecError
from edgec.plugins import load_entry_points
from edgec.pm.base import Pass

ENTRY_POINT_GROUP = "edgec.passes"

_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, NamedPipeline] = {}
_PLUGIN_SOURCES: dict[str, str] = {}
_loaded = False


@dataclass(frozen=True)
class NamedPipeline:
    """A pipeline string under a name (e.g. ``default``), optionally repeated to a fixed point."""

    name: str
    pipeline: str
    fixed_point: bool
    description: str


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator that registers a pass under its ``name``."""
    name = cls.name
    if not name or name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"pass {cls.__qualname__} needs a kebab-case 'name', got {name!r}")
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"two passes are named {name!r}: {_PASSES[name]} and {cls}")
    if not (cls.__doc__ or "").strip():
        raise ValueError(f"pass {name!r} needs a one-sentence docstring")
    _PASSES[name] = cls
    return cls


def register_pipeline(name: str, pipeline: str, *, fixed_point: bool = False, description: str = "") -> None:
    """Registers a named pipeline that pipeline strings can use like a pass name."""
    _PIPELINES[name] = NamedPipeline(name, pipeline, fixed_point, description)


def _load_builtin_and_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import edgec.passes as builtin

    for module in pkgutil.walk_packages(builtin.__path__, prefix="edgec.passes."):
        importlib.import_module(module.name)
    _PLUGIN_SOURCES.update(load_entry_points(ENTRY_POINT_GROUP, lambda: set(_PASSES), "pass"))


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name (built-ins and plugins)."""
    _load_builtin_and_plugins()
    return dict(sorted(_PASSES.items()))


def all_pipelines() -> dict[str, NamedPipeline]:
    _load_builtin_and_plugins()
    return dict(sorted(_PIPELINES.items()))


def plugin_source(name: str) -> str | None:
    """The distribution that provided a plugin pass, ``None`` for built-ins."""
    _load_builtin_and_plugins()
    return _PLUGIN_SOURCES.get(name)


def get_pass(name: str) -> type[Pass]:
    passes = all_passes()
    if name not in passes:
        known = ", ".join(list(passes) + list(all_pipelines()))
        raise EdgecError(f"unknown pass '{name}'; available: {known}")
    return passes[name]
