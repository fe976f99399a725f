"""The one base class of duetmc's own errors.

A `DuetmcError` is about the user's input or environment (a corrupt file, a malformed row, a cache built
with another encoder, a read-only path): its message names the thing, what is wrong and what to do, and
the CLI prints it as one line. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os


class DuetmcError(Exception):
    """Bad input or environment; the message is one line for a person."""


class UsageError(DuetmcError, ValueError):
    """An option or argument value that cannot work (named in the message)."""


class PathError(DuetmcError, OSError):
    """A path that cannot be read or written: missing, a file where a folder is needed, no permission."""


# Errors of the machine rather than of the program: the CLI prints them as one line (cli/common.py).
DISK_ERRNOS = {errno.ENOSPC: "free some space there (df -h) or write somewhere else",
               errno.EDQUOT: "free some of your quota or write somewhere else",
               errno.EROFS: "choose a writable path (a shared cache: use an overlay)"}
RERUN = "; then run the same command again: finished work is reused"


def machine_error(exc: BaseException) -> bool:
    """A full disk or quota, or a read-only mount: not one item's fault, so a loop that records a bad
    item and goes on must stop instead (every later item would fail the same way)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


@contextlib.contextmanager
def naming_file(path: str):
    """A failed write() raises an OSError that names no file; name the one being written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, path) from exc


def path_error(exc: OSError, what: str = "") -> PathError:
    """Turn an OSError about a user path into one line naming the path and the fix."""
    path = exc.filename or "?"
    doing = f" {what}" if what else ""
    if isinstance(exc, PermissionError):
        fix = "choose a path you can write, or ask its owner for access (a shared cache: use an overlay)"
        return PathError(f"{path}: permission denied{doing}; {fix}")
    if exc.errno in DISK_ERRNOS:
        reason = (exc.strerror or os.strerror(exc.errno)).lower()
        return PathError(f"{path}: {reason}{doing}; {DISK_ERRNOS[exc.errno]}{RERUN}")
    return PathError(f"{path}: {exc.strerror or exc}{doing}")
