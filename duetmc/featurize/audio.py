"""Audio featurizer: decode, window, run a locked encoder, time-pool its hidden states, write the cache.

Decoding (duetmc.featurize.decode) streams each item in blocks, downmixes to mono and resamples each
window with torchaudio, so memory is bounded by the window and batch, never by the track. The plan
(duetmc.featurize.plan) follows the manifest. Tracks longer than the window are cut into windows; the
last window is aligned to the track's end, so every window of a long track is full length and nothing is ever padded (MERT's group norm makes padded
and unpadded batches differ, docs/DESIGN.md §5). Clips shorter than the window form a window of their own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duetmc import cache_spec
from duetmc.cache_access import ensure_writable
from duetmc.cache_integrity import record_checksums
from duetmc.cache_spec import AudioSettings, CacheError
from duetmc.featurize.decode import (AudioError, WindowReader, load_audio, resampled_length,  # noqa: F401 (API)
                                    to_encoder_input)
from duetmc.featurize.hf import EncoderLoadError, duetmc_home, strict_from_pretrained
from duetmc.featurize.locks import ShardClaims, plan_lock
from duetmc.featurize.plan import (REMOVED, PlannedItem, diff_plan, fingerprint, plan_items, report,  # noqa: F401
                                   window_layout)
from duetmc.featurize.rows import Job, RunSummary, check_positive, fixed_batches, parse_task, run_rows, shards_of_task
from duetmc.manifest import Item, load_manifest


# --- encoders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioEncoderSpec:
    family: str  # hubert | musicnn | tiny-hubert
    source: str  # HF id, or a name the family resolves
    sample_rate: int
    normalize: bool = False  # zero-mean unit-variance input, as the model's feature extractor does
    # the default --batch-size: musicnn's forward on a batch of 8 takes 2x eight single forwards on CPU
    # (BENCHMARKS.md §3: batch 1 is 4.4x a plain loop, batch 8 0.83x)
    batch_size: int = 8


AUDIO_ENCODERS: dict[str, AudioEncoderSpec] = {
    "mert-v1-95m": AudioEncoderSpec("hubert", "m-a-p/MERT-v1-95M", 24000, normalize=True),
    "mert-v1-330m": AudioEncoderSpec("hubert", "m-a-p/MERT-v1-330M", 24000, normalize=True),
    "musicnn-mtt": AudioEncoderSpec("musicnn", "musicnn-mtt", 16000, batch_size=1),
    "musicnn-msd": AudioEncoderSpec("musicnn", "musicnn-msd", 16000, batch_size=1),
    "tiny-audio": AudioEncoderSpec("tiny-hubert", "tiny-audio", 24000),
}


class AudioEncoder:
    """A locked encoder: waveform [B, S] at `sample_rate` -> hidden states [B, L, frames, D]."""

    def __init__(self, name, module, sample_rate, n_layers, dim, min_samples, info, normalize=False, forward=None):
        self.name, self.module, self.sample_rate = name, module, sample_rate
        self.n_layers, self.dim, self.min_samples = n_layers, dim, min_samples
        self.info, self.normalize = info, normalize
        self._forward = forward or module

    @torch.inference_mode()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            wav = (wav - wav.mean(-1, keepdim=True)) / torch.sqrt(wav.var(-1, keepdim=True) + 1e-7)
        return self._forward(wav)

    def to(self, device: str, dtype: torch.dtype = torch.float32) -> "AudioEncoder":
        self.module.to(device=device, dtype=dtype)
        return self


def _tiny_hubert_dir() -> Path:
    """A tiny random HuBERT with a fixed seed, saved once and reloaded like any checkpoint (for tests)."""
    from transformers import HubertConfig, HubertModel

    path = duetmc_home() / "encoders" / "tiny-audio-v1"
    if (path / "config.json").exists():
        return path
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, feat_extract_norm="group", do_stable_layer_norm=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = HubertModel(config)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    model.save_pretrained(tmp)
    with contextlib.suppress(OSError):  # another process may have won the race; both are identical
        tmp.rename(path)
    return path


def _load_hubert(name: str, spec: AudioEncoderSpec, source: str, revision: str | None) -> AudioEncoder:
    from transformers import HubertModel

    from duetmc.featurize.mert_config import check_mert_config

    check_mert_config(source, revision, spec.sample_rate)  # before the weights: refuse MERT-only computation
    model = strict_from_pretrained(HubertModel, source, revision=revision)
    cfg = model.config

    def forward(wav):
        out = model(wav, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=1)

    min_samples = 1
    while int(model._get_feat_extract_output_lengths(torch.tensor(min_samples))) < 1:
        min_samples += 1
    info = {"name": name, "family": spec.family, "source": source, "revision": revision,
            "class": "transformers.HubertModel", "weights_sha256": cache_spec.state_dict_sha256(model.state_dict())}
    return AudioEncoder(name, model, spec.sample_rate, cfg.num_hidden_layers + 1, cfg.hidden_size,
                        min_samples, info, normalize=spec.normalize, forward=forward)


def load_audio_encoder(name: str, path: str | None = None, revision: str | None = None) -> AudioEncoder:
    """Load a registered encoder by name; `path` points it at a local directory or another HF id."""
    if name not in AUDIO_ENCODERS:
        raise EncoderLoadError(f"unknown audio encoder {name!r}; choose one of {sorted(AUDIO_ENCODERS)}")
    spec = AUDIO_ENCODERS[name]
    if spec.family == "musicnn":
        from duetmc.featurize.musicnn import load_musicnn

        module = load_musicnn(name)
        info = {"name": name, "family": "musicnn", "source": f"musicnn wheel ({name})", "revision": None,
                "class": "duetmc.featurize.musicnn.MusicnnEncoder", "weights_sha256": module.weights_sha256}
        return AudioEncoder(name, module, module.sample_rate, module.n_layers, module.dim, module.min_samples, info)
    if spec.family == "tiny-hubert":
        return _load_hubert(name, spec, path or str(_tiny_hubert_dir()), None)
    return _load_hubert(name, spec, path or spec.source, revision)


# --- windows ---------------------------------------------------------------------------------


def time_pool(hidden: torch.Tensor, tokens: int) -> torch.Tensor:
    """[B, L, F, D] -> [B, L, tokens, D] by averaging equal spans of frames."""
    b, l, f, d = hidden.shape
    x = hidden.reshape(b * l, f, d).transpose(1, 2)
    x = torch.nn.functional.adaptive_avg_pool1d(x, tokens)
    return x.transpose(1, 2).reshape(b, l, tokens, d)


# --- the cache group -------------------------------------------------------------------------


@dataclass
class AudioFeaturizeConfig:
    manifest: str
    cache: str
    encoder: str
    encoder_path: str | None = None
    revision: str | None = None
    window_s: float = 10.0
    hop_s: float | None = None
    tokens: int = 4
    layers: tuple[int, ...] | None = None
    batch_size: int | None = None  # None: the encoder's default (AudioEncoderSpec.batch_size)
    workers: int = 2
    task: str | None = None  # "I/N": this process featurizes the I-th of N whole-shard ranges
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype; bf16 or fp16 on GPU. Features are stored as float16.
    rows_per_shard: int = cache_spec.DEFAULT_ROWS_PER_SHARD
    progress: bool = True

    def __post_init__(self):  # at the boundary: before any encoder is loaded or cache created
        check_positive(window=self.window_s, hop=self.hop_s, tokens=self.tokens, batch_size=self.batch_size,
                       workers=self.workers, rows_per_shard=self.rows_per_shard)
        parse_task(self.task)

    @property
    def settings(self) -> AudioSettings:
        return AudioSettings(self.encoder, self.window_s, self.hop_s, self.tokens,
                             None if self.layers is None else tuple(self.layers))


def _rows_arrays(group, rps: int, L: int, T: int, D: int, n_rows: int) -> None:
    mk = functools.partial(cache_spec.create_array, group)
    mk("features", (n_rows, L, T, D), "float16", (1, L, T, D), ["window", "layer", "token", "dim"],
       shards=(rps, L, T, D), fill_value=0)
    mk("done", (n_rows,), "bool", (rps,), ["window"], fill_value=False)
    mk("failure", (n_rows,), str, (rps,), ["window"])
    mk("window_item", (n_rows,), "int32", (rps,), ["window"])
    mk("window_start", (n_rows,), "float32", (rps,), ["window"])
    mk("window_len", (n_rows,), "int64", (rps,), ["window"])


def _item_arrays(group, n_items: int) -> None:
    mk = functools.partial(cache_spec.create_array, group)
    c = max(1, n_items)
    mk("ids", (n_items,), str, (c,), ["item"])
    mk("item_rows", (n_items, 2), "int64", (c, 2), ["item", "pair"])
    mk("split", (n_items,), str, (c,), ["item"])
    mk("tags", (n_items,), str, (c,), ["item"])  # ground truth for zero-shot tag retrieval, JSON {category: [tags]}
    mk("item_source", (n_items,), str, (c,), ["item"])  # the plan of each item (duetmc.featurize.plan)


def _write_rows(group, first: int, item_index: list[int], plans: list[PlannedItem], sr: int) -> list[int]:
    """Write the windows of `plans` from row `first` on; returns each item's first row."""
    layout = [p.layout for p in plans]
    n = sum(map(len, layout))
    starts = first + np.cumsum([0] + [len(lay) for lay in layout])[:-1]
    sl = slice(first, first + n)
    group["window_item"][sl] = np.concatenate([np.full(len(lay), k, np.int32) for k, lay in zip(item_index, layout)])
    group["window_start"][sl] = np.array([s / sr for lay in layout for s, _ in lay], dtype=np.float32)
    group["window_len"][sl] = np.array([m for lay in layout for _, m in lay], dtype=np.int64)
    group["failure"][sl] = np.array([p.failure for p in plans for _ in p.layout], dtype=object)
    group["done"][sl] = False
    return starts.tolist()


def _write_items(group, index: list[int], items: list[Item], plans: list[PlannedItem], rows: list[tuple]) -> None:
    for k, item, plan, (start, count) in zip(index, items, plans, rows):
        group["ids"][k] = item.id
        group["split"][k] = item.split or ""
        group["tags"][k] = json.dumps(item.tags, ensure_ascii=False)
        group["item_source"][k] = plan.to_json()
        group["item_rows"][k] = [start, count]


def _create_group(root, key, items, plans, config, encoder, layers, sr, win, hop):
    group = root.require_group("audio").require_group(key)
    rps = config.rows_per_shard
    n_rows = sum(len(p.layout) for p in plans)
    _rows_arrays(group, rps, len(layers), config.settings.tokens, encoder.dim, n_rows)
    _item_arrays(group, len(items))
    index = list(range(len(items)))
    starts = _write_rows(group, 0, index, plans, sr)
    group["ids"][:] = np.array([it.id for it in items])
    group["split"][:] = np.array([it.split or "" for it in items], dtype=object)
    group["tags"][:] = np.array([json.dumps(it.tags, ensure_ascii=False) for it in items], dtype=object)
    group["item_source"][:] = np.array([p.to_json() for p in plans], dtype=object)
    group["item_rows"][:] = np.array([[s, len(p.layout)] for s, p in zip(starts, plans)], dtype=np.int64).reshape(-1, 2)
    # provenance is written last: a group without it is a plan cut short (killed) and is planned again
    group.attrs.update(cache_spec.provenance(config.settings, encoder.info, {
        "modality": "audio", "sample_rate": sr, "window_samples": win, "hop_samples": hop,
        "layers": layers, "n_layers_encoder": encoder.n_layers, "dim": encoder.dim,
        "rows_per_shard": rps, "min_samples": encoder.min_samples,
        "batch_size": config.batch_size or getattr(AUDIO_ENCODERS.get(encoder.name), "batch_size", 8),
        "compute_dtype": config.dtype,
        "manifest": str(Path(config.manifest).resolve()) if config.manifest else None,
    }))
    return group


def _update_group(group, items: list[Item], config, sr: int, win: int, hop: int) -> dict:
    """Make a stored plan follow the manifest: append, re-plan, retire, remove. Returns the report."""
    ids = cache_spec.read_strings(group["ids"]).tolist()
    split = cache_spec.read_strings(group["split"]).tolist()
    if "item_source" in group:
        stored = [PlannedItem.from_json(t) for t in cache_spec.read_strings(group["item_source"])]
    else:  # planned before fingerprints existed: keep finished items as they are, re-plan the others
        pos = {it.id: it for it in items}
        done = np.asarray(group["done"][:], dtype=bool)
        finished = [bool(done[s:s + n].all()) for s, n in np.asarray(group["item_rows"][:])]
        stored = [PlannedItem(fingerprint(pos[i]) if i in pos and ok else {}, None, "", [])
                  for i, ok in zip(ids, finished)]
        cache_spec.create_array(group, "item_source", (len(ids),), str, (max(1, len(ids)),), ["item"])[:] = \
            np.array([p.to_json() for p in stored], dtype=object)
    d = diff_plan(items, ids, stored, split)
    _follow_labels(group, items, d.kept, split, config.cache, d.unchanged)
    if d.unchanged:
        return report(d, items, ids)
    fresh = d.added + [m for m, _ in d.changed]
    _retire(group, config.cache, [k for _, k in d.changed] + d.removed)
    if fresh:
        plans = plan_items([items[m] for m in fresh], sr, win, hop, config.workers)
        index = list(range(len(ids), len(ids) + len(d.added))) + [k for _, k in d.changed]
        n_old, n_new = group["done"].shape[0], sum(len(p.layout) for p in plans)
        for name in ("features", "done", "failure", "window_item", "window_start", "window_len"):
            group[name].resize((n_old + n_new,) + group[name].shape[1:])
        for name in ("ids", "item_rows", "split", "tags", "item_source"):
            group[name].resize((len(ids) + len(d.added),) + group[name].shape[1:])
        starts = _write_rows(group, n_old, index, plans, sr)
        _write_items(group, index, [items[m] for m in fresh], plans, [(s, len(p.layout)) for s, p in zip(starts, plans)])
    for k in d.removed:
        group["split"][k] = REMOVED
        group["item_rows"][k] = [0, 0]
    return report(d, items, ids)


def _follow_labels(group, items: list[Item], kept, split: list[str], cache: str, unchanged: bool) -> None:
    """Split and tags are not features: kept items follow the manifest in place. A group read from an
    overlay's base is never written: any difference there is refused with the fix."""
    tags = cache_spec.read_strings(group["tags"]).tolist()
    edits = [(m, k) for m, k in kept if (items[m].split or "") != split[k]
             or json.dumps(items[m].tags, ensure_ascii=False) != tags[k]]
    if getattr(group.store, "read_only", False) and (edits or not unchanged):
        raise CacheError(f"{cache}: {group.path} is read from a base of this overlay, and your manifest differs "
                         f"from its plan (new, edited or relabelled clips); an overlay never writes to its base: "
                         "featurize your clips into a cache of your own (or ask the base's owner to add them)")
    for m, k in edits:
        group["split"][k] = items[m].split or ""
        group["tags"][k] = json.dumps(items[m].tags, ensure_ascii=False)


def _retire(group, cache: str, items: list[int]) -> None:
    """Take the rows of re-planned or removed items out of use, under the claims of their shards."""
    spans = [(int(s), int(s + n)) for s, n in np.asarray(group["item_rows"][:])[items] if n > 0]
    rps = int(group.attrs["rows_per_shard"])
    shards = sorted({r // rps for lo, hi in spans for r in range(lo, hi)})
    with ShardClaims(cache, group.path).claimed(shards):
        for lo, hi in spans:
            group["window_item"][lo:hi] = -1
            group["done"][lo:hi] = False
            group["failure"][lo:hi] = np.full(hi - lo, "", dtype=object)


def prepare_audio_cache(config: AudioFeaturizeConfig, encoder: AudioEncoder | None = None,
                        items: list[Item] | None = None):
    """Create the group, or make its plan follow the manifest. Returns (group, items, encoder, plan report)."""
    ensure_writable(config.cache, "audio")  # before the model loads
    items = items if items is not None else load_manifest(config.manifest)
    encoder = encoder or load_audio_encoder(config.encoder, config.encoder_path, config.revision)
    settings = config.settings
    sr = encoder.sample_rate
    win, hop = int(round(settings.window_s * sr)), int(round(settings.hop * sr))
    layers = cache_spec.resolve_layers(settings.layers, encoder.n_layers, encoder.name)
    with plan_lock(config.cache):
        root = cache_spec.open_root(config.cache, mode="a")
        key = settings.key()
        if "audio" in root and key in root["audio"] and "encoder" in root["audio"][key].attrs:
            group = root["audio"][key]
            _check_existing(group, encoder, config)
            return group, items, encoder, _update_group(group, items, config, sr, win, hop)
        plans = plan_items(items, sr, win, hop, config.workers)
        group = _create_group(root, key, items, plans, config, encoder, layers, sr, win, hop)
        return group, items, encoder, {"added": [it.id for it in items], "changed": [], "kept": 0, "removed": []}


def _check_existing(group, encoder: AudioEncoder, config: AudioFeaturizeConfig) -> None:
    attrs = dict(group.attrs)
    cache_spec.check_compute_dtype(group, config.dtype, config.cache)
    sha = attrs["encoder"]["weights_sha256"]
    if sha != encoder.info["weights_sha256"]:
        raise CacheError(
            f"{config.cache}: audio/{group.basename} was written by {attrs['encoder']['source']} with weights "
            f"sha256 {sha[:12]}…, but the loaded {encoder.name} has {encoder.info['weights_sha256'][:12]}…. "
            "Mixing encoders in one array is refused; use another --cache."
        )


class _Readers:
    """Open WindowReaders by item, oldest closed first; items arrive in plan order."""

    def __init__(self, items: list[Item], plans: list[PlannedItem], sr: int, keep: int, max_open: int):
        self.items, self.plans, self.sr, self.keep, self.max_open = items, plans, sr, keep, max_open
        self.open: OrderedDict[int, WindowReader] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, k: int) -> WindowReader:
        with self.lock:
            if k in self.open:
                self.open.move_to_end(k)
                return self.open[k]
            reader = WindowReader(self.items[k], self.plans[k].scan, self.sr, self.keep)
            self.open[k] = reader
            for old in list(self.open)[:-self.max_open]:
                if self.open[old].lock.acquire(blocking=False):  # never close one a thread is reading
                    self.open.pop(old).close()
            return reader

    def close(self) -> None:
        for reader in self.open.values():
            reader.close()


def _stored_items(group, manifest_items: list[Item]) -> tuple[list[Item], list[PlannedItem]]:
    """The group's items (in stored order) with their plans."""
    by_id = {it.id: it for it in manifest_items}
    ids = cache_spec.read_strings(group["ids"]).tolist()
    plans = [PlannedItem.from_json(t) for t in cache_spec.read_strings(group["item_source"])]
    return [by_id.get(i) for i in ids], plans


def _window_job(group, items, plans, encoder: AudioEncoder, config, dtype) -> tuple[Job, _Readers]:
    attrs = dict(group.attrs)
    layers, tokens, sr = attrs["layers"], attrs["settings"]["tokens"], attrs["sample_rate"]
    batch_size = int(attrs["batch_size"])  # batches are part of the plan: resumes write identical bytes
    row_item = np.asarray(group["window_item"][:])
    row_start = np.round(np.asarray(group["window_start"][:], dtype=np.float64) * sr).astype(np.int64)
    lengths = np.asarray(group["window_len"][:])
    src_sr = max([p.scan.sample_rate for p in plans if p.scan is not None] or [sr])
    keep = int((config.workers + 2) * batch_size * attrs["hop_samples"] / sr * src_sr)
    readers = _Readers(items, plans, sr, keep, max_open=2 * config.workers + 2)
    ids = cache_spec.read_strings(group["ids"])

    def window(r: int):
        k, n = int(row_item[r]), int(lengths[r])
        if plans[k].failure or plans[k].scan is None:
            raise AudioError(plans[k].failure or "not planned by this version of duetmc; rerun featurize")
        if n < encoder.min_samples:
            raise AudioError(f"too short: {n / sr:.4f} s, the encoder needs at least {encoder.min_samples / sr:.4f} s")
        return readers.get(k).read(int(row_start[r]), n)

    def prepare(rows):
        out, failed = [], {}
        for r in rows:
            try:
                out.append(window(r))
            except AudioError as exc:  # one bad window never drops the item's other windows
                failed[r] = str(exc)
                out.append(None)
        return out, failed

    def compute(rows, prepared):
        wavs, failed = prepared
        ok = [k for k, w in enumerate(wavs) if w is not None]
        feats = np.zeros((len(rows), len(layers), tokens, encoder.dim), dtype=np.float32)
        if ok:
            feats[ok] = window_features(encoder, [wavs[k] for k in ok], layers, tokens, config.device, dtype)
        if not np.isfinite(feats.astype(np.float16)).all():  # as stored: float16 overflow is Inf too
            bad = [rows[k] for k in ok if not np.isfinite(feats[k].astype(np.float16)).all()]
            failed.update({r: "encoder produced NaN/Inf" for r in bad})
            feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
        return feats, failed

    live = row_item >= 0
    job = Job(lambda lo, hi: fixed_batches(lengths, lo, hi, batch_size, live), prepare, compute,
              lambda r: str(ids[row_item[r]]))
    return job, readers


COMPUTE_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                  "fp16": torch.float16, "float16": torch.float16}


def window_features(encoder: AudioEncoder, wavs: list[np.ndarray], layers: list[int], tokens: int,
                    device: str = "cpu", dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Equal-length windows -> the cached features [W, layers, tokens, D] in float32 (before float16
    storage); DuetModel.embed_audio runs exactly this."""
    x = torch.from_numpy(np.stack(wavs))
    if torch.device(device).type == "cuda":  # pinned: the host-to-device copy runs asynchronously
        x = x.pin_memory()
    x = x.to(device, non_blocking=True).to(dtype)
    return time_pool(encoder(x)[:, layers].float(), tokens).cpu().numpy()


def featurize_audio(config: AudioFeaturizeConfig) -> RunSummary:
    """Featurize this process's shards (all of them without --task). Resumable; never stops on bad audio."""
    group, manifest_items, encoder, plan_report = prepare_audio_cache(config)
    cache_spec.check_base_group(group, config.cache)
    dtype = COMPUTE_DTYPES[config.dtype]
    encoder.to(config.device, dtype)
    items, plans = _stored_items(group, manifest_items)
    job, readers = _window_job(group, items, plans, encoder, config, dtype)
    shards = shards_of_task(group["done"].shape[0], int(group.attrs["rows_per_shard"]), config.task)
    try:
        summary = run_rows(group, shards, job,
                           ShardClaims(config.cache, group.path), workers=config.workers,
                           progress=config.progress, desc=f"audio {encoder.name}")
    finally:
        readers.close()
    summary.failures = list(dict(summary.failures).items())
    record_checksums(group)  # a no-op until every shard of the group is finished
    summary.plan = plan_report
    ids = cache_spec.read_strings(group["ids"])
    summary.warnings = [(str(ids[k]), p.scan.warning) for k, p in enumerate(plans) if p.scan and p.scan.warning
                        and items[k] is not None]
    return summary
