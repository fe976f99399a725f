"""Training data from the cache: which texts pair with which clips, and reading their features.

No encoder runs here. A `PairIndex` links each clip to its texts (tags-only text, captions, views and
their TextSwap variants) using the text group's records. The sampler turns (seed, epoch) into batch
specs — row numbers only — so a resumed run sees exactly the batches it would have seen, and the two
feature sources (in memory, or streamed from Zarr) give identical batches for identical specs.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr

from duetmc import cache_spec
from duetmc.cache_spec import AudioSettings, CacheError, TextSettings


@dataclass(frozen=True)
class DataSpec:
    """One cache and the feature groups to read from it."""

    cache: str
    audio: AudioSettings
    text: TextSettings
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"cache": self.cache, "audio": cache_spec.settings_dict(self.audio),
                "text": cache_spec.settings_dict(self.text), "weight": self.weight}

    @staticmethod
    def from_json(d: dict) -> "DataSpec":
        a, t = dict(d["audio"]), dict(d["text"])
        for s in (a, t):
            if s.get("layers") is not None:
                s["layers"] = tuple(s["layers"])
        return DataSpec(d["cache"], AudioSettings(**a), TextSettings(**t), d.get("weight", 1.0))


def resolve_spec(cache: str, audio_key: str | None = None, text_key: str | None = None, weight: float = 1.0) -> DataSpec:
    """Pick the cache's audio and text groups; refuse ambiguity with the list of choices."""
    root = cache_spec.open_root(cache)

    def pick(modality: str, key: str | None):
        keys = cache_spec.list_groups(root, modality)
        if key is None:
            if len(keys) != 1:
                raise CacheError(f"{cache}: {'no' if not keys else len(keys)} {modality} feature groups "
                                 f"({', '.join(keys) or 'featurize first'}); choose one with --{modality}-key")
            key = keys[0]
        if key not in keys and modality == "text":  # a text set's name (`featurize text --text-set`)
            named = [k for k in keys if dict(root["text"][k].attrs).get("text_set", {}).get("name") == key]
            key = named[0] if len(named) == 1 else key
        if key not in keys:
            raise CacheError(f"{cache}: no {modality}/{key}; available: {', '.join(keys) or 'none'}")
        return dict(root[modality][key].attrs)["settings"]

    a, t = pick("audio", audio_key), pick("text", text_key)
    for s in (a, t):
        if s.get("layers") is not None:
            s["layers"] = tuple(s["layers"])
    return DataSpec(cache, AudioSettings(**a), TextSettings(**t), weight)


class PairIndex:
    """Clips and their texts in one cache, as row numbers into its audio and text groups."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        root = cache_spec.open_root(spec.cache)
        self.audio: zarr.Group = cache_spec.open_features(root, "audio", spec.audio, spec.cache)
        self.text: zarr.Group = cache_spec.open_features(root, "text", spec.text, spec.cache)
        a = self.audio
        self.ids = cache_spec.read_strings(a["ids"])
        self.split = np.array([s or "train" for s in cache_spec.read_strings(a["split"])], dtype=object)
        self.item_rows = np.asarray(a["item_rows"][:])
        done = np.asarray(a["done"][:], dtype=bool)
        self.usable = np.array([done[s:s + n].all() and n > 0 for s, n in self.item_rows])
        self.text_lengths = np.asarray(self.text["lengths"][:])
        self.text_done = np.asarray(self.text["done"][:], dtype=bool)
        rec = {name: self.text["records"][name] for name in ("text_row", "item", "kind", "lang", "view", "parent_row", "source")}
        rows = np.asarray(rec["text_row"][:])
        items = cache_spec.read_strings(rec["item"])
        kinds = cache_spec.read_strings(rec["kind"])
        langs = cache_spec.read_strings(rec["lang"])
        views = np.asarray(rec["view"][:])
        parents = np.asarray(rec["parent_row"][:])
        sources = cache_spec.read_strings(rec["source"])
        texts = cache_spec.read_strings(self.text["texts"])
        pos = {str(i): k for k, i in enumerate(self.ids)}
        n = len(self.ids)
        self.tags_row = np.full(n, -1, dtype=np.int64)
        self.captions: list[list[int]] = [[] for _ in range(n)]  # English captions: human first
        self.views: list[list[int]] = [[] for _ in range(n)]
        self.queries: dict[str, list[tuple[int, int]]] = defaultdict(list)  # lang -> (text row, item)
        self.swaps: dict[tuple[int, int], list[int]] = defaultdict(list)  # (item, parent row) -> swaps
        self.labels: dict[str, int] = {}  # single-tag texts for zero-shot tag retrieval
        human: list[list[int]] = [[] for _ in range(n)]
        for row, item, kind, lang, view, parent, source in zip(rows, items, kinds, langs, views, parents, sources):
            row = int(row)
            if not self.text_done[row]:
                continue
            if kind == "label":
                self.labels[str(texts[row])] = row
                continue
            k = pos.get(str(item))
            if k is None:
                continue
            if kind == "swap":
                if parent >= 0:
                    self.swaps[(k, int(parent))].append(row)
                continue
            if kind == "caption":
                self.queries[str(lang)].append((row, k))
                if lang == "en":
                    (human[k] if source == "human" else self.captions[k]).append(row)
            elif kind == "tags" and lang == "en":
                self.tags_row[k] = row
            elif kind == "view" and lang == "en":
                self.views[k].append(row)
        self.captions = [h + c for h, c in zip(human, self.captions)]
        self.max_swaps = max((len(v) for v in self.swaps.values()), default=0)

    def items(self, split: str) -> np.ndarray:
        """Usable items of a split that have some English text."""
        has_text = np.array([self.tags_row[k] >= 0 or bool(self.captions[k]) for k in range(len(self.ids))])
        return np.flatnonzero((self.split == split) & self.usable & has_text)

    def fixed_text(self, k: int, p_cap: float) -> int:
        """The one text used for item k without View Dropout: its first caption, or its tags text."""
        if p_cap > 0 and self.captions[k]:
            return self.captions[k][0]
        return int(self.tags_row[k]) if self.tags_row[k] >= 0 else self.captions[k][0]

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        return tuple(self.audio["features"].shape[1:])

    @property
    def text_shape(self) -> tuple[int, int, int]:
        return tuple(self.text["features"].shape[1:])


@dataclass
class BatchSpec:
    """Row numbers of one batch; `ds` says which dataset each row comes from."""

    ds: np.ndarray  # [B]
    audio_rows: np.ndarray  # [B] window rows
    text_rows: np.ndarray  # [B]
    hard_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))  # [B, K], -1 = none


@dataclass
class SamplerConfig:
    p_cap: float = 0.5
    views: bool = True
    swap: bool = True
    shard_shuffle: bool = False  # shuffle shards, then rows within a window of shards (streaming)


def epoch_batches(indices: list[PairIndex], cfg: SamplerConfig, seed: int, epoch: int, batch_size: int,
                  p_swap: float, multiple_of: int = 1) -> list[BatchSpec]:
    """The batches of one epoch, a pure function of (seed, epoch): resumes and ranks agree on it."""
    rng = np.random.default_rng([seed, epoch])
    pool: list[tuple[int, int]] = []
    for d, index in enumerate(indices):
        items = index.items("train")
        count = int(round(len(items) * index.spec.weight))
        if index.spec.weight == 1.0:
            chosen = items
        else:
            chosen = rng.choice(items, size=count, replace=index.spec.weight > 1.0)
        if cfg.shard_shuffle:
            rps = int(index.audio.attrs["rows_per_shard"])
            shard_of = index.item_rows[chosen, 0] // rps
            shard_rank = rng.permutation(int(shard_of.max()) + 1 if len(chosen) else 0)
            chosen = chosen[np.lexsort((rng.random(len(chosen)), shard_rank[shard_of]))]
        pool += [(d, int(k)) for k in chosen]
    if not cfg.shard_shuffle:
        pool = [pool[i] for i in rng.permutation(len(pool))]
    batch_size = min(batch_size, len(pool))
    batch_size -= batch_size % multiple_of
    if batch_size < 2:
        raise CacheError(f"only {len(pool)} training items: need at least 2 (and {multiple_of} per rank)")
    k_max = max((ix.max_swaps for ix in indices), default=0) if cfg.swap else 0
    batches = []
    for start in range(0, len(pool), batch_size):
        chunk = pool[start:start + batch_size]
        chunk = chunk[: len(chunk) - len(chunk) % multiple_of]
        if len(chunk) < max(2, multiple_of):
            continue
        ds = np.array([d for d, _ in chunk])
        audio_rows, text_rows = [], []
        hard = np.full((len(chunk), k_max), -1, dtype=np.int64)
        use_hard = rng.random(len(chunk)) < p_swap
        for j, (d, k) in enumerate(chunk):
            index = indices[d]
            s, n = index.item_rows[k]
            audio_rows.append(int(s + rng.integers(n)))
            if rng.random() < cfg.p_cap and (index.captions[k] or index.views[k]):
                pool_k = index.views[k] if cfg.views and index.views[k] else None
                text = int(rng.choice(pool_k)) if pool_k else index.fixed_text(k, 1.0)
            else:
                text = index.fixed_text(k, 0.0)
            text_rows.append(text)
            if k_max and use_hard[j]:
                swaps = index.swaps.get((k, text), [])
                hard[j, : len(swaps)] = swaps
        batches.append(BatchSpec(ds, np.array(audio_rows), np.array(text_rows), hard))
    return batches


# --- feature sources ---------------------------------------------------------------------------


class MemorySource:
    """Every selected array loaded once (dask, shard-aligned) into tensors; batches gather by index."""

    def __init__(self, indices: list[PairIndex], device: str = "cpu"):
        import dask.array as da

        def load(arr, rps):
            return torch.from_numpy(da.from_zarr(arr, chunks=(rps,) + arr.shape[1:]).compute())

        self.audio = [load(ix.audio["features"], int(ix.audio.attrs["rows_per_shard"])).to(device) for ix in indices]
        self.text = [load(ix.text["features"], int(ix.text.attrs["rows_per_shard"])).to(device) for ix in indices]
        self.text_len = [torch.from_numpy(ix.text_lengths.astype(np.int64)).to(device) for ix in indices]
        self.text_tokens = max(ix.text_shape[1] for ix in indices)
        self.device = device

    def _gather(self, tensors, ds, rows, pad_tokens=None):
        parts = []
        for d in np.unique(ds):
            sel = np.flatnonzero(ds == d)
            x = tensors[d][torch.from_numpy(rows[sel]).to(self.device)]
            if pad_tokens is not None and x.shape[2] < pad_tokens:
                x = torch.nn.functional.pad(x, (0, 0, 0, pad_tokens - x.shape[2]))
            parts.append((sel, x))
        out = torch.empty((len(rows),) + parts[0][1].shape[1:], dtype=parts[0][1].dtype, device=self.device)
        for sel, x in parts:
            out[torch.from_numpy(sel).to(self.device)] = x
        return out

    def audio_batch(self, ds, rows):
        return self._gather(self.audio, ds, rows)

    def text_batch(self, ds, rows):
        x = self._gather(self.text, ds, rows, self.text_tokens)
        lens = self._gather([t.unsqueeze(1) for t in self.text_len], ds, rows).squeeze(1)
        return x, lens

    def close(self):
        pass


class StreamingSource:
    """Reads batches from Zarr in a thread pool: rows that lie close together in one shard (shard-ordered
    shuffling makes audio rows do so) as one contiguous slice, scattered rows as per-row `arr[i]` reads
    (DESIGN.md §4: faster than oindex on sharded arrays). A slice of one-row inner chunks decodes about
    3x more rows per second than per-row reads (bench/streaming.py), so a shard's rows are sliced when
    their span is at most `DENSE_SPAN` times their count."""

    DENSE_SPAN = 3

    def __init__(self, indices: list[PairIndex], device: str = "cpu", threads: int = 8):
        self.audio = [ix.audio["features"] for ix in indices]
        self.text = [ix.text["features"] for ix in indices]
        self.text_len = [torch.from_numpy(ix.text_lengths.astype(np.int64)) for ix in indices]
        self.text_tokens = max(ix.text_shape[1] for ix in indices)
        self.device = device
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.rows_read = 0
        self.bytes_read = 0

    def _reads(self, arrays, ds, rows):
        """(array, row slice, batch positions) per read: dense runs within a shard coalesce into one slice."""
        reads = []
        for d in np.unique(ds):
            sel = np.flatnonzero(ds == d)
            arr = arrays[d]
            rps = (arr.shards or arr.chunks)[0]
            shard = rows[sel] // rps
            for s in np.unique(shard):
                pos = sel[shard == s]
                r = rows[pos]
                lo, hi = int(r.min()), int(r.max()) + 1
                if hi - lo <= self.DENSE_SPAN * len(np.unique(r)):
                    reads.append((arr, lo, hi, pos))
                else:
                    reads += [(arr, int(rows[p]), int(rows[p]) + 1, np.array([p])) for p in pos]
        return reads

    def _read(self, arrays, ds, rows, pad_tokens=None):
        ds, rows = np.asarray(ds), np.asarray(rows, dtype=np.int64)
        reads = self._reads(arrays, ds, rows)
        blocks = self.pool.map(lambda rd: np.asarray(rd[0][rd[1]:rd[2]]), reads)
        shape = arrays[int(ds[0])].shape[1:]
        if pad_tokens is not None:
            shape = shape[:1] + (pad_tokens,) + shape[2:]
        x = np.zeros((len(rows),) + shape, dtype=arrays[int(ds[0])].dtype)
        for (_, lo, _, pos), block in zip(reads, blocks):
            x[pos, :, : block.shape[2]] = block[rows[pos] - lo]  # shorter texts of another cache: zero-padded
        self.rows_read += len(rows)
        self.bytes_read += x.nbytes
        return torch.from_numpy(x).to(self.device)

    def audio_batch(self, ds, rows):
        return self._read(self.audio, ds, rows)

    def text_batch(self, ds, rows):
        lens = torch.stack([self.text_len[d][int(r)] for d, r in zip(ds, rows)]).to(self.device)
        return self._read(self.text, ds, rows, self.text_tokens), lens

    def close(self):
        self.pool.shutdown()


def trim_padding(text: torch.Tensor, lengths: torch.Tensor):
    """Drop padding columns beyond the batch's longest text: masked tokens cost compute, not results."""
    return text[:, :, : int(lengths.max())], lengths


def check_compatible(indices: list[PairIndex]) -> None:
    """Mixed caches must share feature shapes (same encoders and settings), except text length."""
    a0, t0 = indices[0].audio_shape, indices[0].text_shape
    for ix in indices[1:]:
        if ix.audio_shape != a0 or (ix.text_shape[0], ix.text_shape[2]) != (t0[0], t0[2]):
            raise CacheError(
                f"{ix.spec.cache}: features {ix.audio_shape}/{ix.text_shape} differ from "
                f"{indices[0].spec.cache}: {a0}/{t0}; mixed caches need the same encoders and layers")
