"""The `duetmc` command line: a thin click layer over the library.

Each module in this package defines a `COMMANDS` list; heavy imports happen inside the commands so
that `duetmc --help` stays instant.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import click

# OpenMP's default spin-wait made 2-thread torch steps several times slower on shared, oversubscribed
# nodes (BENCHMARKS.md, "OpenMP wait policy"). Set before torch loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from duetmc import __version__


from duetmc.cli.common import DuetmcGroup  # noqa: E402


@click.group(cls=DuetmcGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="duetmc")
@click.option("--debug", is_flag=True, envvar="DUETMC_DEBUG",
              help="Show the traceback of duetmc's own errors too (also $DUETMC_DEBUG=1).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Music-text retrieval heads trained from cached, locked encoder features (DuET-MC)."""
    ctx.obj = {"debug": debug}


for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    for _cmd in importlib.import_module(f"{__name__}.{_mod}").COMMANDS:
        main.add_command(_cmd)
