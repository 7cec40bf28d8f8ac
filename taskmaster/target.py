"""Where the user's functions live, their KEY=VALUE arguments, and the files named after a run."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .errors import ConfigError

STATE_SUFFIX = ".tmstate"
FAILURES_SUFFIX = ".failures.jsonl"


@dataclass(frozen=True)
class Target:
    """Where the user's function lives: ``module``, ``module:func`` or ``path/file.py[:func]``."""

    spec: str
    location: str
    func: str

    @classmethod
    def parse(cls, spec: str, default_func: str) -> Target:
        location, sep, func = spec.rpartition(":") if _has_func(spec) else (spec, "", "")
        if not location or (sep and not func.isidentifier()):
            raise ConfigError(
                f"bad target {spec!r}: expected module, module:function or path/file.py[:function]"
            )
        return cls(spec, location, func or default_func)

    @property
    def is_path(self) -> bool:
        return self.location.endswith(".py") or "/" in self.location or "\\" in self.location

    @property
    def identity(self) -> str:
        """The target as a run's identity knows it: a file by its name, so that a script moved
        to another directory (or named ./x.py instead of x.py) is still the same run."""
        return f"{Path(self.location).name if self.is_path else self.location}:{self.func}"

    def load(self) -> Callable[..., Any]:
        """Import the module (or file) and return the function, or raise one clear ConfigError."""
        module = self._load_path() if self.is_path else self._load_module()
        try:
            func = getattr(module, self.func)
        except AttributeError:
            raise ConfigError(
                f"target {self.spec!r}: {self.location} has no function {self.func!r}; "
                f"define it or name another with {self.location}:FUNCTION"
            ) from None
        if not callable(func):
            raise ConfigError(f"target {self.spec!r}: {self.func!r} is not callable")
        return cast(Callable[..., Any], func)

    def _load_module(self) -> Any:
        # A module named on the command line is looked up from the current directory too,
        # as `python -m` would.
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            return importlib.import_module(self.location)
        except ModuleNotFoundError as e:
            if e.name and (self.location == e.name or self.location.startswith(e.name + ".")):
                raise ConfigError(
                    f"target {self.spec!r}: no module named {e.name!r}; "
                    "check the spelling, install it, or run from the directory that holds it"
                ) from None
            raise

    def _load_path(self) -> Any:
        path = Path(self.location)
        if not path.is_file():
            raise ConfigError(f"target {self.spec!r}: no such file {str(path)!r}")
        name = "_taskmaster_target_" + re.sub(r"\W", "_", path.stem)
        loaded = sys.modules.get(name)
        if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
            return loaded  # tm-run loads get_jobs and handle_job: one import, as for a module
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"target {self.spec!r}: {str(path)!r} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        # Registered before running so that pickled jobs whose classes live in the script
        # refer to a module name the slave, loading the same file, will also have.
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))
        spec.loader.exec_module(module)
        return module


def _has_func(spec: str) -> bool:
    # A Windows drive letter (C:\x.py) is not a function separator.
    head, sep, tail = spec.rpartition(":")
    return bool(sep) and not (len(head) == 1 and tail.startswith(("\\", "/")))


def parse_kwargs(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` words into keyword arguments for ``get_jobs`` (values stay strings)."""
    kwargs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"bad argument {pair!r}: expected KEY=VALUE with KEY a Python name")
        if key == "last":
            raise ConfigError("'last' is set by taskmaster on resume; pass other KEY=VALUE pairs")
        kwargs[key] = value
    return kwargs


def default_state_path(target: Target, kwargs: dict[str, Any]) -> Path:
    """The state file for this run: in the current directory, named from target and kwargs."""
    # A file is named by its absolute path: ./jobs.py and jobs.py are the same run.
    location = str(Path(target.location).resolve()) if target.is_path else target.location
    # Values as the command line gives them (strings): `count=300` from Python names the same
    # run as the word count=300.
    identity = json.dumps([location, target.func, sorted((k, str(v)) for k, v in kwargs.items())])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(target.location).stem if target.is_path
                  else target.location)
    return Path.cwd() / f"{stem}-{target.func}-{digest}{STATE_SUFFIX}"


def failures_path_for(state_path: Path) -> Path:
    """Where failures are recorded when no --failures-file is given: beside the state file."""
    name = state_path.name.removesuffix(STATE_SUFFIX)
    return state_path.with_name(name + FAILURES_SUFFIX)
