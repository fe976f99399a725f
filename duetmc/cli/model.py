"""`duetmc export | embed`: a trained model outside duetmc (a model folder, embeddings for any evaluator)."""

from __future__ import annotations

import click

from duetmc.cli.common import emit_json


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, help="Folder for config.json, heads.safetensors and the model card.")
@click.option("--checkpoint", default="best", show_default=True)
@click.option("--cache", default=None, help="The training cache, if it moved since training.")
@click.option("--push-to-hub", "hub_repo", default=None, help="Also upload the folder to this Hub repo (owner/name).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private.")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(run, out, checkpoint, cache, hub_repo, private, as_json):
    """Export a run as a self-describing model folder that DuetModel.from_pretrained loads."""
    from duetmc.export import export_run

    result = export_run(run, out, checkpoint, cache, hub_repo, private)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"exported model {result['model_id'][:12]} to {out}" + (f"; pushed: {result['hub']}" if hub_repo else ""))


@click.command("embed")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--cache", default=None, help="[default: the training cache]")
@click.option("--out", required=True, help="Embeddings file (.npz) in the format `duetmc eval --baseline` reads.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]))
@click.option("--checkpoint", default="best", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def embed_cmd(run, cache, out, split, checkpoint, as_json):
    """Write the split's clip embeddings and query embeddings (the queries `duetmc eval` scores)."""
    from duetmc.embeddings import run_embeddings, write_embeddings

    arrays = run_embeddings(run, cache, split, checkpoint)
    write_embeddings(arrays, out)
    summary = {"out": out, "clips": len(arrays["audio"]), "queries": len(arrays["query"]),
               "languages": sorted(set(arrays["query_lang"].tolist()))}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {summary['clips']} clip and {summary['queries']} query embeddings to {out}")


COMMANDS = [export_cmd, embed_cmd]
