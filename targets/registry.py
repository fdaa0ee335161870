"""The one registry of targets. Target modules in ``edgec.targets`` register on import."""

from __future__ import annotations

import importlib
import pkgutil

from edgec.errors import EdgecError
from edgec.targets.base import Target

_TARGETS: dict[str, Target] = {}
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


def all_targets() -> dict[str, Target]:
    _load()
    return dict(sorted(_TARGETS.items()))


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        raise EdgecError(f"unknown target '{name}'; available: {', '.join(targets)}")
    return targets[name]
