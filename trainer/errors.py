"""Errors the tools raise for bad input: each names the file and the field at fault.

The command-line entry points catch :class:`BCIError` and print its message instead of a
traceback; library users can catch the same classes.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["BCIError", "DataFormatError", "ForbiddenPickleError", "MissingFileError", "UsageError", "UsageTypeError",
           "run_command"]


class BCIError(Exception):
    """Base class of the errors that are the user's input (or the user's machine) at
    fault, not a bug: the command lines print them as one line.  Anything else that
    escapes a command is a bug and shows its traceback."""


class UsageError(BCIError, ValueError):
    """A bad argument, option or combination of options; the message names it and the
    value received.  A ``ValueError`` too, for library callers."""


class UsageTypeError(BCIError, TypeError):
    """An argument of the wrong type; the message names it and the type received."""


class MissingFileError(BCIError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DataFormatError(BCIError, ValueError):
    """A data file is missing, unreadable, or not in the format it should be in.

    Parameters
    ----------
    path : path-like | None
        The file (or folder) at fault.
    field : str | None
        The key, attribute or column at fault (``None`` when the whole file is).
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | PathLike | None, field: str | None, problem: str):
        self.path = None if path is None else str(path)
        self.field = field
        self.problem = problem
        where = [] if self.path is None else [self.path]
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class ForbiddenPickleError(DataFormatError):
    """A pickled file asked for an object the restricted loader does not admit."""


def run_command(prog: str, command, *, verbose: bool = False, interrupted: int = 130) -> int:
    """Run ``command()`` for a command line and return its exit code.

    A :class:`BCIError` (the user's input at fault) or an ``OSError`` (the machine: a full
    disk, a missing permission) prints ``PROG: error: MESSAGE`` on one line and gives
    exit code 2, with the traceback under it when ``verbose``; Ctrl-C gives
    ``interrupted``.  Anything else is a bug: its traceback is shown as Python shows it.
    """
    import sys
    import traceback

    try:
        return command()
    except (BCIError, OSError) as err:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return interrupted
