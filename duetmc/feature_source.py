"""Feature sources: where batch features come from, in memory or streamed from Zarr.

Both sources serve the same batch specs with identical tensors; which one is used is a performance
choice made by one policy (`choose_mode`) for train, eval and search alike: in memory when the arrays
that will be read fit the byte budget, else streamed. Every read names the array, shard and items
when the store fails (duetmc.integrity); in memory mode an unreadable shard is refused, or skipped
like a missing one when the index allows missing items.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from duetmc import integrity
from duetmc.errors import UsageError
from duetmc.pairs import PairIndex
from duetmc.shard_reader import ShardRows

DEFAULT_MEMORY_BUDGET_GB = 8.0
MODES = ("auto", "memory", "streaming")


def selected_bytes(indices: list[PairIndex], modalities=("audio", "text")) -> int:
    """Bytes of the feature arrays that will be read (uncompressed, as they sit in memory)."""
    return sum(ix.group(m)["features"].nbytes for ix in indices for m in modalities)


def choose_mode(indices: list[PairIndex], mode: str = "auto", memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                modalities=("audio", "text")) -> str:
    """'memory' when the selected arrays fit the budget (or `mode` says so), else 'streaming'."""
    if mode not in MODES:
        raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if not memory_budget_gb >= 0:
        raise UsageError(f"--memory-budget-gb {memory_budget_gb}: must be a number >= 0")
    return "memory" if selected_bytes(indices, modalities) <= memory_budget_gb * 2**30 else "streaming"


def open_source(indices: list[PairIndex], mode: str = "auto", memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                device: str = "cpu", threads: int = 8, modalities=("audio", "text")):
    """(feature source, chosen mode) under the one policy."""
    mode = choose_mode(indices, mode, memory_budget_gb, modalities)
    if mode == "memory":
        return MemorySource(indices, device, modalities), mode
    return StreamingSource(indices, device, threads), mode


def _load(index: PairIndex, modality: str, pool: ThreadPoolExecutor) -> torch.Tensor:
    """A whole feature array, shard by shard; unreadable shards are refused or skipped (zero rows)."""
    arr = index.group(modality)["features"]
    rps = integrity.rows_per_shard(arr)
    out = np.zeros(arr.shape, dtype=arr.dtype)
    done = index.audio_done if modality == "audio" else index.text_done

    def read(lo):
        try:
            out[lo:lo + rps] = arr[lo:lo + rps]
            return None
        except Exception as exc:  # a damaged shard: zarr names neither array nor rows
            return lo, exc

    bad = [r for r in pool.map(read, range(0, arr.shape[0], rps)) if r is not None]
    shards = {lo // rps: np.flatnonzero(done[lo:lo + rps]) + lo for lo, _ in bad}
    shards = {s: rows for s, rows in shards.items() if len(rows)}  # rows never used need no data
    if shards:
        index.exclude(modality, shards, f"cannot be read ({bad[0][1]})")
    return torch.from_numpy(out)


class MemorySource:
    """Every selected array loaded once, shard by shard, into tensors; batches gather by index."""

    def __init__(self, indices: list[PairIndex], device: str = "cpu", modalities=("audio", "text")):
        with ThreadPoolExecutor(max_workers=4) as pool:
            self.audio = [_load(ix, "audio", pool).to(device) for ix in indices] if "audio" in modalities else []
            self.text = [_load(ix, "text", pool).to(device) for ix in indices] if "text" in modalities else []
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
    """Reads each batch's rows in a thread pool, shard by shard, in the sampler's order (the trainer's
    Prefetcher runs it ahead of the step). Local caches in duetmc's layout are read straight from the
    shard files (duetmc.shard_reader); other stores through zarr: rows that lie close together in one
    shard as one contiguous slice, scattered rows as per-row `arr[i]` reads (docs/DESIGN.md §4: faster than
    oindex on sharded arrays), a shard's rows being sliced when their span is at most `DENSE_SPAN`
    times their count."""

    DENSE_SPAN = 3

    def __init__(self, indices: list[PairIndex], device: str = "cpu", threads: int = 8, direct: bool = True):
        self.indices = indices
        self.audio = [ix.audio["features"] for ix in indices]
        self.text = [ix.text["features"] for ix in indices]
        self.direct = {(m, d): ShardRows(ix.group(m)["features"], ix.where(m), self._items_of(ix, m))
                       for d, ix in enumerate(indices) for m in ("audio", "text")
                       if direct and ShardRows.supports(ix.group(m)["features"])}
        self.text_len = [ix.text_lengths.astype(np.int64) for ix in indices]
        self.text_tokens = max(ix.text_shape[1] for ix in indices)
        self.device = device
        if len(self.direct) == 2 * len(indices):  # CPU-bound reads (pread + decode): more threads than cores contend
            threads = max(1, min(threads, os.cpu_count() or 1))
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.rows_read = 0
        self.bytes_read = 0

    def _reads(self, arrays, ds, rows, modality):
        """(dataset, row slice, batch positions) per read: one per shard for direct reads; through zarr,
        dense runs within a shard coalesce into one slice."""
        reads = []
        for d in np.unique(ds):
            sel = np.flatnonzero(ds == d)
            rps = integrity.rows_per_shard(arrays[d])
            shard = rows[sel] // rps
            for s in np.unique(shard):
                pos = sel[shard == s]
                r = rows[pos]
                lo, hi = int(r.min()), int(r.max()) + 1
                if (modality, int(d)) in self.direct or hi - lo <= self.DENSE_SPAN * len(np.unique(r)):
                    reads.append((int(d), lo, hi, pos))
                else:
                    reads += [(int(d), int(rows[p]), int(rows[p]) + 1, np.array([p])) for p in pos]
        return reads

    @staticmethod
    def _items_of(index: PairIndex, modality: str):
        return lambda rows: index.items_of(modality)(rows)  # built only when a read fails

    def _read(self, modality, ds, rows, pad_tokens=None):
        arrays = self.audio if modality == "audio" else self.text
        ds, rows = np.asarray(ds), np.asarray(rows, dtype=np.int64)
        reads = self._reads(arrays, ds, rows, modality)
        shape = arrays[int(ds[0])].shape[1:]
        if pad_tokens is not None:
            shape = shape[:1] + (pad_tokens,) + shape[2:]
        x = np.zeros((len(rows),) + shape, dtype=arrays[int(ds[0])].dtype)

        def read(rd):
            """Decoded straight into x where the rows fit it; else returned to be copied in."""
            d, lo, hi, pos = rd
            direct = self.direct.get((modality, d))
            if direct is not None and direct.row_shape == shape:
                direct.read_into(rows[pos], x, pos)
                return None
            if direct is not None:
                return direct.read(rows[pos]), True
            index = self.indices[d]
            return integrity.read_rows(arrays[d], lo, hi, index.where(modality), self._items_of(index, modality)), False

        for (_, lo, _, pos), got in zip(reads, self.pool.map(read, reads)):
            if got is not None:
                block = got[0] if got[1] else got[0][rows[pos] - lo]
                x[pos, :, : block.shape[2]] = block  # shorter texts of another cache: zero-padded
        self.rows_read += len(rows)
        self.bytes_read += x.nbytes
        return to_device(torch.from_numpy(x), self.device)

    def audio_batch(self, ds, rows):
        return self._read("audio", ds, rows)

    def text_batch(self, ds, rows):
        ds, rows = np.asarray(ds), np.asarray(rows, dtype=np.int64)
        lens = np.zeros(len(rows), dtype=np.int64)
        for d in np.unique(ds):
            lens[ds == d] = self.text_len[d][rows[ds == d]]
        lens = to_device(torch.from_numpy(lens), self.device)
        return self._read("text", ds, rows, self.text_tokens), lens

    def close(self):
        self.pool.shutdown()


def to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    """A host batch onto the device: on CUDA through pinned memory with a non-blocking copy, so the
    reader thread's copy overlaps the step's kernels."""
    if torch.device(device).type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def trim_padding(text: torch.Tensor, lengths: torch.Tensor):
    """Drop padding columns beyond the batch's longest text: masked tokens cost compute, not results."""
    return text[:, :, : int(lengths.max())], lengths
