"""gevent, switched on in exactly one place: before any user code is imported."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def switch_on(monkey_patch: bool = True) -> None:
    """Switch gevent on: the one place it happens, before any user code is imported."""
    if monkey_patch:
        from gevent import monkey

        with _entry_points_read_once():
            monkey.patch_all()


@contextlib.contextmanager
def _entry_points_read_once() -> Iterator[None]:
    """gevent looks for plugins before and after it patches each module, and every look reads
    the metadata of every installed package: a tenth of a second of each process's start-up.
    Nothing is installed while it patches, so one reading can answer every look."""
    from importlib import metadata

    original = metadata.entry_points
    everything: Any = None

    def entry_points(**params: Any) -> Any:
        nonlocal everything
        if everything is None:
            everything = original()
        return everything.select(**params) if params else everything

    metadata.entry_points = entry_points
    try:
        yield
    finally:
        metadata.entry_points = original
