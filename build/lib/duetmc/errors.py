"""The one base class of duetmc's own errors.

A `DuetmcError` is about the user's input or environment (a corrupt file, a malformed row, a cache built
with another encoder, a read-only path): its message names the thing, what is wrong and what to do, and
the CLI prints it as one line. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DuetmcError(Exception):
    """Bad input or environment; the message is one line for a person."""


class UsageError(DuetmcError, ValueError):
    """An option or argument value that cannot work (named in the message)."""


class PathError(DuetmcError, OSError):
    """A path that cannot be read or written: missing, a file where a folder is needed, no permission."""


def path_error(exc: OSError, what: str = "") -> PathError:
    """Turn an OSError about a user path into one line naming the path and the fix."""
    path = exc.filename or "?"
    if isinstance(exc, PermissionError):
        fix = "choose a path you can write, or ask its owner for access (a shared cache: use an overlay)"
        return PathError(f"{path}: permission denied{' ' + what if what else ''}; {fix}")
    return PathError(f"{path}: {exc.strerror or exc}{' ' + what if what else ''}")
