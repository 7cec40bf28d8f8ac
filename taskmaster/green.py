"""gevent, switched on in exactly one place: before any user code is imported."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

PLUGIN_GROUPS = "gevent.plugins"
"""What gevent's plugin entry points are named under (``gevent.plugins.monkey.*``)."""


def switch_on(monkey_patch: bool = True) -> None:
    """Switch gevent on: the one place it happens, before any user code is imported."""
    if monkey_patch:
        from gevent import monkey

        with _plugins_looked_up_cheaply():
            monkey.patch_all()


@contextlib.contextmanager
def _plugins_looked_up_cheaply() -> Iterator[None]:
    """gevent looks for plugins before and after it patches each module, and every look reads
    the metadata of every installed package (importing ``importlib.metadata`` for it): a
    tenth of a second of each process's start-up, for plugins hardly anybody installs.

    When no installed package declares a gevent plugin, the looks only notify (what gevent
    does besides); otherwise one reading answers every look. Nothing is installed while it
    patches."""
    import gevent.events

    # Internals of gevent (not in its stubs): where they are not, the general way.
    events: Any = gevent.events
    original = getattr(events, "notify_and_call_entry_points", None)
    if original is None or not hasattr(events, "notify") or _plugins_declared():
        with _entry_points_read_once():
            yield
        return
    events.notify_and_call_entry_points = events.notify
    try:
        yield
    finally:
        events.notify_and_call_entry_points = original


def _plugins_declared() -> bool:
    """Whether an installed package may declare a gevent plugin: a distribution on
    ``sys.path`` (other than gevent) whose entry points name the group, or a path entry we
    cannot look into cheaply (a zip file), which might.

    gevent's own plugin only warns about patching signal without os, and we patch both."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:
            return True
        except OSError:
            continue  # a path entry that does not exist holds no packages
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")) or name.startswith("gevent-"):
                continue
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), "rb") as f:
                    if PLUGIN_GROUPS.encode() in f.read():
                        return True
            except OSError:
                continue  # no entry points (most packages)
    return False


@contextlib.contextmanager
def _entry_points_read_once() -> Iterator[None]:
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
