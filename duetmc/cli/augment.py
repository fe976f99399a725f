"""`duetmc augment` (captions, views, swaps -> views.jsonl) and `duetmc datasets import`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

from duetmc.cli.common import emit_json


def _echo_warnings(caught) -> None:
    """Library warnings (unknown tags, missing audio) as plain lines rather than Python tracebacks."""
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duetmc" / "captions"


@click.command("augment")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Views file to write (JSONL).")
@click.option("--captioner", type=click.Choice(["template", "llm", "hf"]), default="template", show_default=True,
              help="Tag-to-caption backend: offline templates, an OpenAI-compatible server, or a local transformers model.")
@click.option("--n-views", "n_views", type=click.IntRange(0), default=10, show_default=True, help="Augmented View Dropout views per item.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--endpoint", help="llm: base URL of the server, e.g. http://node12:8000/v1.")
@click.option("--model", help="llm: model name served by the endpoint; hf: path to a local model folder.")
@click.option("--api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True, help="llm: which endpoint to call.")
@click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="llm: bearer token, if the server wants one [env OPENAI_API_KEY].")
@click.option("--concurrency", type=click.IntRange(1), default=4, show_default=True, help="llm: requests in flight at once.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=60.0, show_default=True, help="llm: seconds per request.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="llm: on-disk caption cache, so reruns cost nothing [default: $XDG_CACHE_HOME/duetmc/captions].")
@click.option("--vocab", "vocab_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Tag vocabulary and TextSwap dictionary (JSON) replacing, or extending, the packaged one.")
@click.option("--translate", default=None, metavar="LANGS",
              help="Also translate the English human captions into these languages (e.g. de,fr,it,es) through the "
                   "OpenAI-compatible server of --endpoint/--model, cached like captions; written as captions in "
                   "those languages with source 'translation' (Table 3 queries).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def augment(manifest, out, captioner, n_views, seed, endpoint, model, api, api_key, concurrency, timeout_s, cache_dir, vocab_path,
            translate, as_json):
    """Write every text the trainer may see: tags, captions, View Dropout views and TextSwap negatives."""
    from duetmc.augment.pipeline import run_augment
    from duetmc.augment.viewsfile import write_views
    from duetmc.augment.vocab import load_vocabulary
    from duetmc.manifest import load_manifest

    vocab = load_vocabulary(vocab_path)
    items = load_manifest(manifest)
    llm = dict(endpoint=endpoint, model=model, api=api, concurrency=concurrency, timeout_s=timeout_s,
               cache_dir=cache_dir or _default_cache_dir(), api_key=api_key)
    backend = _captioner(captioner, llm, vocab)
    translator, languages = _translator(translate, backend, llm, vocab)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_augment(items, backend, n_views=n_views, seed=seed, vocab=vocab, translator=translator,
                             languages=languages)
    _echo_warnings(caught)
    write_views(result.records, out)
    stats = getattr(backend, "stats", None)
    if as_json:
        summary = {"out": str(out), "records": len(result.records), **result.report.to_json()}
        emit_json({**summary, "captioner_stats": stats.to_json()} if stats is not None else summary)
    else:
        _print_summary(result, out, captioner, stats, languages)


def _captioner(name: str, llm: dict, vocab):
    from duetmc.augment import captions as cap

    if name == "llm":
        if not llm["endpoint"] or not llm["model"]:
            raise click.UsageError("--captioner llm needs --endpoint URL and --model NAME")
        return cap.LLMCaptioner(cap.LLMConfig(**llm), vocab)
    if name == "hf":
        if not llm["model"]:
            raise click.UsageError("--captioner hf needs --model PATH (a local transformers model folder)")
        return cap.HFCaptioner(cap.HFConfig(path=Path(llm["model"])), vocab)
    return cap.TemplateCaptioner(vocab)


def _translator(translate: str | None, backend, llm: dict, vocab):
    """(translator, languages) for --translate, through the same OpenAI-compatible client as captions."""
    if not translate:
        return None, ()
    from duetmc.augment import captions as cap
    from duetmc.augment.translate import LLMTranslator, parse_languages

    languages = parse_languages(translate)
    if not llm["endpoint"] or not llm["model"]:
        raise click.UsageError("--translate needs --endpoint URL and --model NAME (an OpenAI-compatible server)")
    client = backend if isinstance(backend, cap.LLMCaptioner) else cap.LLMCaptioner(cap.LLMConfig(**llm), vocab)
    return LLMTranslator(client), languages


def _print_summary(result, out, captioner: str, stats, languages) -> None:
    r = result.report
    click.echo(f"wrote {len(result.records)} records for {r.items} items to {out}")
    click.echo("  by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(r.records_by_kind.items())))
    click.echo("  captions by source: " + ", ".join(f"{k} {v}" for k, v in sorted(r.captions_by_source.items())))
    click.echo(f"  swaps made {r.swaps_made}, skipped {r.swaps_skipped} (see 'note' on the parent records)")
    click.echo(f"  unknown tags kept under 'other': {r.unknown_tags}" + (f" (e.g. {', '.join(r.unknown_examples[:5])})" if r.unknown_examples else ""))
    if languages:
        click.echo(f"  translations ({', '.join(languages)}): {r.translations} written, {r.translations_failed} failed")
    if r.items_without_tags:
        click.echo(f"  items without tags (human captions only): {r.items_without_tags}")
    if stats is not None:
        click.echo(f"  {captioner}: {stats.requests} requests, {stats.cache_hits} cache hits, {stats.retries} retries, {stats.fallbacks} template fallbacks")
        if stats.fallbacks and stats.errors:
            click.echo(f"  first failure: {stats.errors[0]}", err=True)


@click.group("datasets")
def datasets():
    """Public music-text datasets."""


@datasets.command("import")
@click.argument("kind", type=click.Choice(["musiccaps", "song-describer", "lp-musiccaps", "yt8m-mtc", "jsonl"]))
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--audio-root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding the audio files (searched recursively by file name; see the names below).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Manifest to write (JSONL).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None, help="Put every item in this split.")
@click.option("--keep-missing", is_flag=True, help="Keep items whose audio file is not found (they are listed either way).")
@click.option("--clip-files", is_flag=True, help="musiccaps: the files hold only the 10 s clip, so no start/end is written.")
@click.option("--all-captions", is_flag=True, help="song-describer: keep captions outside the valid subset too.")
@click.option("--jamendo-tsv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="song-describer: MTG-Jamendo tag tsv [default: song_describer.mtg-jamendo.tsv next to SRC, if present].")
@click.option("--vocab", "vocab_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Tag vocabulary file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def import_(kind, src, audio_root, out, split, keep_missing, clip_files, all_captions, jamendo_tsv, vocab_path, as_json):
    """Turn a public dataset file (MusicCaps CSV, Song Describer CSV, LP-MusicCaps-MTT, YT8M-MusicTextClips CSV,
    JSONL) into a manifest. Audio paths are written relative to the manifest's folder (or absolute), so the
    manifest works from any working directory.

    \b
    Audio file names looked for under --audio-root (<ext>: wav, flac, mp3, ogg, opus):
      musiccaps       <ytid>.<ext> (whole video; start/end written), or the 10 s clip as
                      <ytid>_<start>_<end>.<ext> or <ytid>-<start>-<end>.<ext> (e.g. abc_30_40.wav)
      song-describer  the CSV's path (xx/<track>.mp3) or xx/<track>.2min.mp3, also under audio/,
                      or <track_id>.2min.<ext> / <track_id>.<ext> anywhere
      lp-musiccaps    the record's path (x/<name>.mp3), <name>.<ext>, or <track_id>.<ext>
      yt8m-mtc        <video_id>_<start>_<end>.<ext> (clip), or <video_id>.<ext> (start/end written)
      jsonl           each row's `audio`, relative to --audio-root
    """

    def run():
        from duetmc.augment.vocab import load_vocabulary
        from duetmc.importers import ImportOptions, import_dataset

        extra: dict = {}
        if clip_files:
            if kind != "musiccaps":
                raise click.UsageError("--clip-files applies to musiccaps only")
            extra["clip_files"] = True
        if all_captions or jamendo_tsv:
            if kind != "song-describer":
                raise click.UsageError("--all-captions and --jamendo-tsv apply to song-describer only")
            extra.update(valid_only=not all_captions, jamendo_tsv=jamendo_tsv)
        options = ImportOptions(audio_root=audio_root, split=split, keep_missing=keep_missing, vocab=load_vocabulary(vocab_path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = import_dataset(kind, src, options, out, **extra)
        _echo_warnings(caught)
        if as_json:
            emit_json(report.to_json())
            return
        click.echo(f"{kind}: {report.rows} rows -> {report.items} items, {report.captions} captions, written to {report.out}")
        if report.missing_audio:
            shown = "\n    ".join(report.missing_audio[:10])
            more = f"\n    ... and {len(report.missing_audio) - 10} more" if len(report.missing_audio) > 10 else ""
            kept = "kept" if keep_missing else "left out"
            click.echo(f"  missing audio: {len(report.missing_audio)} file(s), {kept}:\n    {shown}{more}", err=True)
        if report.problems:
            click.echo(f"  {len(report.problems)} row problem(s):\n    " + "\n    ".join(report.problems[:10]), err=True)
        click.echo(f"  unknown tags kept under 'other': {report.unknown_tags}")

    run()


COMMANDS = [augment, datasets]
