"""Shared argument checkers: a wrong type is a :class:`UsageTypeError` (a TypeError), a
bad value a :class:`UsageError` (a ValueError), and the message names the argument and
the value received.  Both are :class:`~trainer.errors.BCIError`, so the command lines
print them as one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from .errors import MissingFileError, UsageError, UsageTypeError

__all__ = ["check_type", "check_option", "check_positive", "check_path"]


def check_type(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    """Raise UsageTypeError unless ``value`` is an instance of ``types``."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = ", ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise UsageTypeError(f"{name} must be of type {names}, got {type(value).__name__} ({value!r:.80})")
    return value


def check_option(value: Any, options: Iterable[Any], name: str) -> Any:
    """Raise UsageError unless ``value`` is one of ``options``."""
    options = list(options)
    if value not in options:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def check_positive(value: Any, name: str, *, strict: bool = True, integer: bool = False) -> Any:
    """Raise unless ``value`` is a (strictly) positive number (an int when ``integer``)."""
    check_type(value, int if integer else (int, float), name)
    if value != value or (value <= 0 if strict else value < 0):  # NaN or out of range
        raise UsageError(f"{name} must be {'> 0' if strict else '>= 0'}, got {value!r}")
    return value


def check_path(value: Any, name: str, *, must_exist: bool = False, kind: str | None = None) -> Path:
    """Return ``value`` as a Path; raise if missing when ``must_exist`` (``kind`` 'file'/'dir')."""
    if not isinstance(value, (str, os.PathLike)):
        raise UsageTypeError(f"{name} must be a path, got {type(value).__name__} ({value!r:.80})")
    path = Path(value).expanduser()
    if must_exist:
        if not path.exists():
            raise MissingFileError(f"{name}: {path} does not exist")
        if kind == "file" and not path.is_file():
            raise UsageError(f"{name}: {path} is not a file")
        if kind == "dir" and not path.is_dir():
            raise UsageError(f"{name}: {path} is not a folder")
    return path
