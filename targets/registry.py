"""The one registry of targets.

Target modules in ``edgec.targets`` register on import; other packages contribute targets through
the entry-point group ``edgec.targets``: each entry point names a module (or a callable) whose
import registers its targets with ``register_target`` (a board vendor's package can add its board
without edgec knowing it).
"""

from __future__ import annotations

import importlib
import pkgutil

from edgec.errors import EdgecError
from edgec.plugins import load_entry_points
from edgec.targets.base import Target

ENTRY_POINT_GROUP = "edgec.targets"

_TARGETS: dict[str, Target] = {}
_PLUGIN_SOURCES: dict[str, str] = {}
_loaded = False


def register_target(target: Target) -> Target:
    if target.name in _TARGETS:
        raise ValueError(f"two targets are named {target.name!r}")
    _TARGETS[target.name] = target
    return target


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import edgec.targets as package

    for module in pkgutil.iter_modules(package.__path__, prefix="edgec.targets."):
        if not module.ispkg and module.name.rsplit(".", 1)[1] not in ("base", "registry"):
            importlib.import_module(module.name)
    _PLUGIN_SOURCES.update(load_entry_points(ENTRY_POINT_GROUP, lambda: set(_TARGETS), "target"))


def all_targets() -> dict[str, Target]:
    _load()
    return dict(sorted(_TARGETS.items()))


def plugin_source(name: str) -> str | None:
    """The distribution that provided a plugin target, ``None`` for built-ins."""
    _load()
    return _PLUGIN_SOURCES.get(name)


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        raise EdgecError(f"unknown target '{name}'; available: {', '.join(targets)}")
    return targets[name]
