"""Shared CLI helpers: JSON output and turning library errors into readable exits."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

import click

COMMANDS: list = []


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def friendly_errors(*error_types: type[BaseException]):
    """Print the library's message (which names file, row and fix) instead of a traceback."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except error_types as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)

        return wrapper

    return deco


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
