"""Shared CLI helpers: JSON output and turning library errors into readable exits."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from duetmc.errors import DuetmcError, machine_error, path_error

COMMANDS: list = []


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


class DuetmcGroup(click.Group):
    """Prints duetmc's own errors (bad input or environment) as one line and exits 2; every other
    exception is a bug and keeps its traceback. `duetmc --debug` shows the traceback of both."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (DuetmcError, OSError) as exc:
            if not _for_people(exc) or (ctx.obj or {}).get("debug") or os.environ.get("DUETMC_DEBUG") == "1":
                raise
            if not isinstance(exc, DuetmcError):
                exc = path_error(exc)
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            sys.exit(2)


def _for_people(exc: BaseException) -> bool:
    """duetmc's own errors, and the machine's: no permission, a full disk or quota, a read-only mount.
    Other OSErrors may be bugs and keep their traceback."""
    return isinstance(exc, (DuetmcError, PermissionError)) or machine_error(exc)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout (this process and its children) to stderr, so that a
    `--json` command prints nothing but its JSON (pyfluidsynth, for one, prints when $CI is set)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_layers(value: str | None):
    """`--layers`: 'all' (or nothing) -> None, '0,6,-1' -> (0, 6, -1)."""
    if value in (None, "all"):
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected 'all' or comma-separated integers, got {value!r}",
                                 param_hint="'--layers'") from None
