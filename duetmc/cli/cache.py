"""`duetmc cache info | validate | verify | overlay | copy | merge | ls`: caches as wholes."""

from __future__ import annotations

import sys

import click

from duetmc.cli.common import emit_json

GROUP_WRITABLE = click.option("--group-writable", is_flag=True,
                              help="Make the new cache's files group-writable (a lab group co-owns it).")


@click.group()
def cache() -> None:
    """Inspect, check, share, copy and merge feature caches."""


@cache.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True)
def info_cmd(path, as_json):
    """Groups, encoders, item counts (done/failed), shapes, bytes on disk and provenance."""
    from duetmc.cache_spec import cache_info

    info = cache_info(path)
    if as_json:
        emit_json(info)
        return
    click.echo(f"{info['cache']} (spec v{info['spec_version']})")
    for base in info.get("bases", []):
        click.echo(f"  overlay of {base}")
    for g in info["groups"]:
        p = g["provenance"]
        enc = p.get("encoder", {})
        click.echo(f"  {g['modality']}/{g['key']}" + (f"  (from {g['source']})" if g.get("source") else ""))
        click.echo(f"    encoder   {enc.get('name')} from {enc.get('source')} (weights sha256 {str(enc.get('weights_sha256'))[:16]}…)")
        click.echo(f"    items     {g['items_done']} done, {g['items_failed']} failed of {g['items']}; "
                   f"rows {g['rows_done']}/{g['rows']}; shards {g['shards']} ({len(g['incomplete_shards'])} incomplete)")
        click.echo(f"    features  {g['shape']} float16, {g['bytes_on_disk'] / 1e6:.1f} MB on disk")
        click.echo(f"    created   {p.get('created')} with {p.get('versions')}")
        if p.get("text_set"):
            click.echo(f"    text set  {p['text_set'].get('name')} (sha256 {str(p['text_set'].get('sha256'))[:16]}…)")
        for item_id, reason in g["failures"]:
            click.echo(f"    failed    {item_id}: {reason}")


@cache.command("validate")
@click.argument("path")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address (default: local threads).")
@click.option("--json", "as_json", is_flag=True)
def validate_cmd(path, scheduler, as_json):
    """Check the whole cache out of core, shard by shard. Exits 1 on any problem."""
    from duetmc.cache_spec import validate_cache

    problems = validate_cache(path, scheduler)
    if as_json:
        emit_json({"cache": path, "valid": not problems, "problems": problems})
    else:
        click.echo("valid" if not problems else "\n".join(f"problem: {p}" for p in problems))
    if problems:
        sys.exit(1)


@cache.command("verify")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(path, as_json):
    """Check every stored file against its sha256 manifest and every chunk's CRC32C.
    Names the array, shard file, rows and items of each damage. Exits 1 on any."""
    from duetmc.cache_integrity import verify_cache

    report = verify_cache(path)
    if as_json:
        emit_json(report)
    else:
        for g in report["groups"]:
            manifest = f"{g['files']} files in the sha256 manifest" if g["manifest"] else "no sha256 manifest (CRC only)"
            click.echo(f"{g['group']}: {'ok' if not g['damaged'] else str(g['damaged']) + ' damaged'}; {manifest}")
        for d in report["damage"]:
            click.echo(f"damaged: {d['line']}")
    if not report["ok"]:
        sys.exit(1)


@cache.command("overlay")
@click.argument("new")
@click.option("--base", "bases", multiple=True, help="Cache to read (repeat to stack; the first wins).")
@click.option("--refresh", is_flag=True, help="Accept the bases' current state after they changed.")
@GROUP_WRITABLE
@click.option("--json", "as_json", is_flag=True)
def overlay_cmd(new, bases, refresh, group_writable, as_json):
    """Make NEW, a cache that reads every group of its bases and writes only into itself.
    Use it wherever a --cache goes: featurize your texts or clips into it, train and eval from it."""
    from duetmc.cache_access import shared_files
    from duetmc.cache_ops import create_overlay, refresh_overlay

    with shared_files(group_writable, new):
        result = {"changed": refresh_overlay(new)} if refresh else create_overlay(new, list(bases))
    if as_json:
        emit_json({"cache": new, **result})
    elif refresh:
        click.echo(f"{new}: recorded the bases' state; " + ("changed: " + "; ".join(result["changed"])
                                                           if result["changed"] else "nothing had changed"))
    else:
        click.echo(f"{new}: overlay of " + ", ".join(b["url"] for b in result["bases"]))


def _layer_range(value: str | None):
    if not value:
        return None
    from duetmc.errors import UsageError

    try:
        out = []
        for part in value.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        return out
    except ValueError:
        raise UsageError(f"--layers {value!r}: give stored layer numbers like 6-12 or 0,6,12") from None


@cache.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option("--split", default=None, help="Only the clips of this split (and their texts).")
@click.option("--items", "items_file", type=click.Path(exists=True, dir_okay=False),
              help="Only these clip ids (one per line).")
@click.option("--layers", default=None, help="Only these stored audio hidden-state layers, e.g. 6-12 or 0,6,12.")
@click.option("--groups", default=None, help="Comma-separated groups (audio/KEY, text/KEY or KEY) [default: all].")
@GROUP_WRITABLE
@click.option("--json", "as_json", is_flag=True)
def copy_cmd(src, dst, split, items_file, layers, groups, group_writable, as_json):
    """Copy SRC (a cache, an overlay, a URL) into the new cache DST, whole or a subset."""
    from duetmc.cache_access import shared_files
    from duetmc.cache_ops import copy_cache

    items = None
    if items_file:
        with open(items_file, encoding="utf-8") as f:
            items = {line.strip() for line in f if line.strip()}
    with shared_files(group_writable, dst):
        result = copy_cache(src, dst, split, items, _layer_range(layers), groups.split(",") if groups else None)
    if as_json:
        emit_json(result)
    else:
        for g in result["groups"]:
            click.echo(f"{g['from']} -> {dst}/{g['to']}: {g['rows']} rows")


@cache.command("merge")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, help="The new, merged cache.")
@GROUP_WRITABLE
@click.option("--json", "as_json", is_flag=True)
def merge_cmd(inputs, out, group_writable, as_json):
    """Merge caches of different clips made with the same encoders and settings into OUT."""
    from duetmc.cache_access import shared_files
    from duetmc.cache_ops import merge_caches

    with shared_files(group_writable, out):
        result = merge_caches(list(inputs), out)
    if as_json:
        emit_json(result)
    else:
        for g in result["groups"]:
            click.echo(f"{g['group']}: {g['rows']} rows from {g['inputs']} caches")


@cache.command("ls")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(root, as_json):
    """Every cache under ROOT: groups, encoders, revisions, items, completeness, size, owner, creation."""
    from duetmc.cache_ops import list_caches

    caches = list_caches(root)
    if as_json:
        emit_json(caches)
        return
    for c in caches:
        click.echo(f"{c['cache']}  {c['bytes'] / 1e6:.1f} MB  owner {c['owner']}  created {c['created']}")
        for b in c["bases"]:
            click.echo(f"  overlay of {b}")
        for g in c["groups"]:
            state = "complete" if g["complete"] else "incomplete"
            click.echo(f"  {g['group']}: {g['encoder']} rev {g['revision'] or '-'}; {g['items_done']}/{g['items']} "
                       f"items done, {g['items_failed']} failed; {state}"
                       + (f"; text set {g['text_set']}" if g["text_set"] else ""))


COMMANDS = [cache]
