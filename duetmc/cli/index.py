"""`duetmc index build | search` and the one-off `duetmc search`: find clips by text or by audio."""

from __future__ import annotations

import click

from duetmc.cli.common import emit_json


@click.group("index")
def index_group():
    """Search a catalog: build an index of clip embeddings once, then query it in milliseconds."""


@index_group.command("build")
@click.argument("model")
@click.option("--cache", default=None, help="Catalog of featurized clips (featurized with the model's encoder).")
@click.option("--audio", "audio", default=None, type=click.Path(exists=True),
              help="Or new audio: a folder of files, or a manifest (embedded with the model's encoder).")
@click.option("--out", required=True, help="Index folder to write (replaced if it is an index).")
@click.option("--split", default="all", show_default=True, help="With --cache: the clips of this split only.")
@click.option("--ann", is_flag=True, help="Also build an approximate (faiss IVF) index for large catalogs.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def build_cmd(model, cache, audio, out, split, ann, device, as_json):
    """Embed a catalog with MODEL (a run directory, an exported folder or a Hub id) and write an index."""
    from duetmc.catalog import build_index
    from duetmc.pretrained import DuetModel

    m = DuetModel.load(model, device=device, progress=not as_json)
    index, skipped = build_index(m, out, cache=cache, audio=audio, split=split, ann=ann)
    summary = {"index": out, "clips": len(index), "skipped": [{"id": i, "reason": r} for i, r in skipped],
               "model_id": index.model_id, "ann": index.meta["ann"]}
    if as_json:
        emit_json(summary)
        return
    for i, reason in skipped:
        click.echo(f"skipped {i}: {reason}", err=True)
    click.echo(f"indexed {len(index)} clips into {out}" + (f" ({len(skipped)} skipped)" if skipped else "")
               + (" with an approximate index" if ann else ""))


def _print_hits(hits: list[dict]) -> None:
    for h in hits:
        tags = "; ".join(f"{k}: {', '.join(v)}" for k, v in (h.get("tags") or {}).items() if v)
        where = f"{h['audio']} {h['start']:.1f}-{h['end']:.1f}s" if h.get("audio") else "(no audio file recorded)"
        click.echo(f"{h['rank']:3d}. {h['score']:.3f}  {h['id']}  [{tags}]  {where}")


def _queries(query, queries_file) -> list[str]:
    from pathlib import Path

    from duetmc.errors import PathError

    if queries_file is None:
        return [query]
    try:
        lines = Path(queries_file).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PathError(f"{queries_file}: cannot read the queries file ({exc.strerror})") from None
    return [line.strip() for line in lines if line.strip()]


@index_group.command("search")
@click.argument("index")
@click.argument("query", required=False)
@click.option("-k", "top_k", default=10, show_default=True, type=int, help="Results per query.")
@click.option("--queries-file", type=click.Path(dir_okay=False), help="One text query per line.")
@click.option("--audio", "audio_file", type=click.Path(dir_okay=False), help="More like this audio file.")
@click.option("--like", "like_id", help="More like this clip of the index (by id).")
@click.option("--exact", is_flag=True, help="Exact search even when the index has an approximate one.")
@click.option("--json", "as_json", is_flag=True)
def search_index_cmd(index, query, top_k, queries_file, audio_file, like_id, exact, as_json):
    """Rank INDEX's clips for a text QUERY, the queries of a file, an audio file, or one of its clips."""
    from duetmc.errors import UsageError
    from duetmc.index import Index

    given = [x for x in (query, queries_file, audio_file, like_id) if x is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of QUERY, --queries-file, --audio or --like")
    idx = Index.load(index)
    if top_k > len(idx) and not as_json:
        click.echo(f"note: -k {top_k} is more than the {len(idx)} clips in {index}; showing all of them", err=True)
    if audio_file is not None:
        hits = idx.search_audio(audio_file, top_k, exact=exact)
    elif like_id is not None:
        hits = idx.search_like(like_id, top_k, exact=exact)
    else:
        texts = _queries(query, queries_file)
        results = idx.search_texts(texts, top_k, exact=exact)
        if queries_file is not None:
            if as_json:
                emit_json([{"query": q, "hits": h} for q, h in zip(texts, results)])
                return
            for q, h in zip(texts, results):
                click.echo(f"# {q}")
                _print_hits(h)
            return
        hits = results[0]
    emit_json(hits) if as_json else _print_hits(hits)


@click.command("search")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("query")
@click.option("--cache", default=None, help="Cache whose clips are searched [default: the training cache].")
@click.option("-k", "top_k", default=10, show_default=True, type=int)
@click.option("--split", default="all", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--json", "as_json", is_flag=True)
def search_cmd(run, query, cache, top_k, split, as_json):
    """One-off: rank a cache's clips for a free-text query (for many queries, build an index)."""
    from duetmc.search import search

    hits = search(run, query, cache, top_k, split)
    emit_json(hits) if as_json else _print_hits(hits)


COMMANDS = [index_group, search_cmd]
