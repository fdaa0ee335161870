"""Plugins: packages that add passes or targets through entry points (``edgec.passes``,
``edgec.targets``). Each entry point names a module (or a callable) whose import registers what it
provides; the registries call :func:`load_entry_points` once, on first use."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from edgec.errors import EdgecError


def load_entry_points(group: str, registered: Callable[[], set[str]], what: str) -> dict[str, str]:
    """Imports every entry point of ``group`` (calling it when it names a callable).

    Args:
        group: the entry-point group.
        registered: the names registered so far (called before and after each import).
        what: ``pass`` or ``target``, for the error message.

    Returns:
        name → the distribution that registered it, for plugins from distributions other than
        ``edgec`` (edgec's own entry points register built-ins).
    """
    sources: dict[str, str] = {}
    for entry in entry_points(group=group):
        before = registered()
        try:
            loaded = entry.load()
        except ImportError as exc:
            raise EdgecError(
                f"{what} plugin '{entry.name}' ({entry.value}) failed to import: {exc}"
            ) from None
        if callable(loaded) and not isinstance(loaded, type):
            loaded()
        source = entry.dist.name if entry.dist else entry.value
        if source != "edgec":
            sources.update(dict.fromkeys(registered() - before, source))
    return sources
