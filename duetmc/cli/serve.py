"""`duetmc serve`: the search page over an index, in a browser."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.argument("index", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but localhost is reachable from other machines (a warning).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--audio-cache-mb", type=click.IntRange(min=0), default=64, show_default=True,
              help="Memory for encoded audio segments (least recently played go first).")
def serve_cmd(index, host, port, audio_cache_mb):
    """Serve a search page for INDEX (from `duetmc index build`): type a description, hear the results.

    The index and the text encoder load once, at startup. Open the printed address in a browser;
    /api/search?q=...&k=... answers with the same JSON as `duetmc index search --json`.
    """
    from duetmc.index import Index
    from duetmc.web.http import serve_app
    from duetmc.web.search_app import Catalog, make_app

    loaded = Index.load(index).warm()
    app = make_app(Catalog(loaded), cache_bytes=audio_cache_mb * 1024 * 1024)
    shown = f"[{host}]" if ":" in host else host
    serve_app(app, host, port, [f"duetmc: {len(loaded)} clips from {index}",
                                f"search page: http://{shown}:{port}/  (Ctrl-C stops)"])


COMMANDS = [serve_cmd]
