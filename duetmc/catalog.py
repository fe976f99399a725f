"""What goes into a search index: a catalog's clips, embedded by one model, with their metadata.

Two sources. A feature cache (the clips were featurized already): its audio features go through the
model's audio head exactly as evaluation does (duetmc.evaluate.embed_items), and the clips' files and
segments come from the manifest the cache was planned from. Or new audio (a folder of files, or a
manifest): `DuetModel.embed_audio_report` runs the locked encoder; a file that cannot be used is
reported with its reason and the others are indexed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from duetmc.errors import PathError, UsageError
from duetmc.index import Index, write_index

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


class _CacheRows:
    """The slice of a feature source `embed_items` reads, straight from a cache's audio group."""

    def __init__(self, group):
        self.features = group["features"]
        self.item_rows = np.asarray(group["item_rows"][:])
        self.audio_shape = tuple(self.features.shape[1:])

    def audio_batch(self, _ds, rows):
        import torch

        rows = np.asarray(rows)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = np.asarray(self.features[lo:hi])  # rows of a batch are (nearly) contiguous: one read
        return torch.from_numpy(block[rows - lo])


def _audio_group(model, cache: str):
    from duetmc import cache_spec
    from duetmc.cache_spec import AudioSettings
    from duetmc.pretrained import ModelError

    settings = dict(model.audio.settings)
    if settings.get("layers") is not None:
        settings["layers"] = tuple(settings["layers"])
    group = cache_spec.open_features(cache_spec.open_root(cache), "audio", AudioSettings(**settings), cache)
    enc = dict(group.attrs)["encoder"]
    if enc["weights_sha256"] != model.audio.encoder["weights_sha256"]:
        raise ModelError(f"{cache}: audio/{group.basename} was featurized by {enc['name']} with weights "
                         f"{enc['weights_sha256'][:12]}…, the model's encoder has "
                         f"{model.audio.encoder['weights_sha256'][:12]}…; featurize the catalog with the model's encoder")
    return group


def _manifest_items(group) -> dict:
    """id -> manifest Item of the manifest the cache was planned from ({} when it is gone)."""
    from duetmc.manifest import load_manifest

    path = dict(group.attrs).get("manifest")
    if not path or not Path(path).exists():
        return {}
    return {it.id: it for it in load_manifest(path)}


def cache_catalog(model, cache: str, split: str = "all") -> tuple[np.ndarray, list[dict], list[tuple[str, str]]]:
    """(embeddings, entries, skipped (id, reason)) for a cache's featurized clips of `split`."""
    from duetmc import cache_spec
    from duetmc.evaluate import embed_items

    group = _audio_group(model, cache)
    ids = cache_spec.read_strings(group["ids"])
    splits = np.array([s or "train" for s in cache_spec.read_strings(group["split"])], dtype=object)
    tags = cache_spec.read_strings(group["tags"])
    rows = _CacheRows(group)
    done = np.asarray(group["done"][:], dtype=bool)
    failure = cache_spec.read_strings(group["failure"])
    usable = np.array([n > 0 and done[s:s + n].all() for s, n in rows.item_rows])
    wanted = np.ones(len(ids), bool) if split == "all" else splits == split
    skipped = [(str(ids[k]), next((str(failure[r]) for r in range(s, s + n) if failure[r]), "not featurized yet"))
               for k, (s, n) in enumerate(rows.item_rows) if wanted[k] and not usable[k]]
    items = np.flatnonzero(wanted & usable)
    if len(items) == 0:
        raise UsageError(f"{cache}: no featurized clips in split {split!r}; featurize the catalog first")
    emb = embed_items(model.heads, rows, 0, rows, items)
    ends = _segment_ends(group, rows.item_rows)
    manifest = _manifest_items(group)
    entries = []
    for k in items:
        it = manifest.get(str(ids[k]))
        start = float(it.start or 0.0) if it else 0.0
        entries.append({"id": str(ids[k]), "audio": str(Path(it.audio).resolve()) if it else None,
                        "start": start, "end": float(it.end) if it and it.end is not None else start + ends[k],
                        "tags": json.loads(tags[k]), "split": str(splits[k])})
    return emb, entries, skipped


def _segment_ends(group, item_rows: np.ndarray) -> np.ndarray:
    """Seconds from each clip's start to the end of its last window."""
    sr = float(dict(group.attrs)["sample_rate"])
    ws = np.asarray(group["window_start"][:], dtype=np.float64)
    wl = np.asarray(group["window_len"][:], dtype=np.float64)
    last = np.maximum(item_rows[:, 0] + item_rows[:, 1] - 1, 0)
    return ws[last] + wl[last] / sr


def audio_items(source: str | Path) -> list:
    """Manifest Items from a manifest file, or one per audio file under a folder (id = relative path)."""
    from duetmc.manifest import Item, load_manifest

    source = Path(source)
    if source.is_file():
        return load_manifest(source)
    if not source.is_dir():
        raise PathError(f"{source}: no such folder or manifest; give a folder of audio files or a manifest")
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under this folder")
    return [Item(str(p.relative_to(source)), p.resolve()) for p in files]


def audio_catalog(model, source: str | Path) -> tuple[np.ndarray, list[dict], list[tuple[str, str]]]:
    """(embeddings, entries, failures (id, reason)) for new audio, embedded by the model's encoder."""
    items = audio_items(source)
    result = model.embed_audio_report(items)
    failures = [(items[i].id, f"{name}: {reason}") for i, name, reason in result.failures]
    entries = []
    for i in result.indices:
        it = items[int(i)]
        start = float(it.start or 0.0)
        end = float(it.end) if it.end is not None else float(sf.info(str(it.audio)).duration)
        entries.append({"id": it.id, "audio": str(Path(it.audio).resolve()), "start": start, "end": end,
                        "tags": it.tags, "split": it.split or ""})
    return result.embeddings, entries, failures


def build_index(model, out: str | Path, cache: str | None = None, audio: str | Path | None = None,
                split: str = "all", ann: bool = False) -> tuple[Index, list[tuple[str, str]]]:
    """Embed a catalog (a cache's clips, or new audio) and write its index; -> (index, skipped clips)."""
    if (cache is None) == (audio is None):
        raise UsageError("give exactly one of --cache (featurized clips) or --audio (a folder or manifest)")
    if cache is not None:
        emb, entries, skipped = cache_catalog(model, cache, split)
        extra = {"source": {"cache": str(cache), "split": split}}
    else:
        emb, entries, skipped = audio_catalog(model, audio)
        extra = {"source": {"audio": str(Path(audio).resolve())}}
    extra["skipped"] = [{"id": i, "reason": r} for i, r in skipped]
    return write_index(out, model, emb, entries, ann, extra), skipped
