"""Which training backends exist: every ``Backend`` class declared under the entry-point
group ``modfactory.backends`` — modfactory's own two (its ``pyproject.toml``) first, then
any other installed package's, which adds a backend without touching modfactory::

    [project.entry-points."modfactory.backends"]
    keyword = "modfactory_keyword:KeywordBackend"

This module knows names and where each class is (``module:attribute``), never the class
and no backend by name: it sits at the bottom, so settings, the run store and the API can
check a name without importing any backend; ``backends`` imports the class when one is used.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger("modfactory.plugins")

ENTRY_POINT_GROUP = "modfactory.backends"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@functools.cache
def backend_targets() -> dict[str, str]:
    """Every backend's name and where its class is: the built-ins first, then the installed
    plugins (a plugin cannot replace a built-in, and a malformed name is skipped; both are
    logged)."""
    targets = {point.name: point.value for point in _built_in()}
    for point in sorted(_declared(), key=lambda p: p.name):
        if targets.get(point.name) == point.value:
            continue  # a built-in, seen again among every package's
        if point.name in targets:
            log.warning(
                "backend plugin %r (%s) ignored: the name is taken by %s",
                point.name,
                point.value,
                targets[point.name],
            )
        elif not _NAME.fullmatch(point.name):
            log.warning(
                "backend plugin %r (%s) ignored: a name is 1-32 of a-z 0-9 _ -, "
                "starting with a letter",
                point.name,
                point.value,
            )
        else:
            targets[point.name] = point.value
    return targets


def _built_in() -> list[EntryPoint]:
    """modfactory's own backends (read from its installed metadata alone)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        points = distribution("modfactory").entry_points
    except PackageNotFoundError:  # a source tree on sys.path, never installed
        log.warning("modfactory is not installed (pip install -e .): no built-in backend")
        return []
    return [point for point in points if point.group == ENTRY_POINT_GROUP]


def _declared() -> list[EntryPoint]:
    """The installed packages' entry points in the group (importlib.metadata reads every
    package's metadata: only when a name is asked for, never at start-up)."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def backend_names() -> tuple[str, ...]:
    return tuple(backend_targets())


def check_backend_name(name: str) -> str:
    """``name`` if a backend has it; ValueError naming the backends installed otherwise."""
    if name not in backend_targets():
        raise ValueError(
            f"unknown backend {name!r}; installed: {', '.join(backend_names())} (a plugin "
            f"adds one through the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    return name


BackendSetting = Annotated[
    str, AfterValidator(lambda name: name if name == "auto" else check_backend_name(name))
]
"""MODFACTORY_BACKEND: ``auto`` or an installed backend's name (entry points read on use)."""
