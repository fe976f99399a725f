"""Rows straight from local shard files: few positioned reads, each row's zstd frame decoded in place.

The streaming source reads rows in the sampler's order, scattered over every shard. Through zarr each
row costs a shard-index fetch and a trip through its async codec pipeline; here each shard's index
(16 bytes per row, checksummed) is read once and kept, the rows a batch needs from a shard are read
with one `os.pread` per run of nearby frames, and each frame is decoded by zstd straight into its place
in the batch array: no per-row buffers or copies, and both reading and decoding run outside the GIL.
Every row is still one zstd frame (the cache layout, docs/CACHE.md), so decoding is the floor
(BENCHMARKS.md §2). Only the layout duetmc's featurizers write is handled (a local store; shards of
whole rows; inner chunks of one row, little-endian bytes + zstd; index at the end, bytes + crc32c);
`ShardRows.supports` says whether an array has it, and the caller uses zarr otherwise. Both paths
return identical arrays (tests/test_feature_source.py).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import google_crc32c
import numpy as np

from duetmc.cache_spec import CacheError
from duetmc.integrity import ItemsOf, damage_message, rows_per_shard

_EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk never written: the fill value
GAP = 64 << 10  # rows of a shard whose frames lie closer than this share one pread


def _codec_names(codecs) -> list[tuple[str, dict]]:
    return [(type(c).__name__, c.to_dict().get("configuration") or {}) for c in codecs]


class ShardRows:
    """Reads rows of one sharded feature array from its shard files."""

    def __init__(self, arr, where: str, items_of: ItemsOf):
        from numcodecs import CRC32C
        from numcodecs.zstd import decompress

        self.arr, self.where, self.items_of = arr, where, items_of
        self.rps = rows_per_shard(arr)
        self.row_shape = tuple(arr.shape[1:])
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        self.root = Path(arr.store.root) / arr.store_path.path
        self.encode_key = arr.metadata.chunk_key_encoding.encode_chunk_key
        self.decompress, self.crc = decompress, CRC32C()  # the codec's function: no per-call wrapping
        # caches written since checksums were added carry a CRC32C after each row's zstd frame
        self.row_crc = _codec_names(arr.metadata.codecs[0].codecs)[-1][0] == "Crc32cCodec"
        self.indices: dict[int, np.ndarray] = {}  # shard -> [rps, 2] (offset, nbytes); 16 bytes per row
        self.paths: dict[int, str] = {}
        self.lock = threading.Lock()

    @staticmethod
    def supports(arr) -> bool:
        """True for the layout duetmc writes, on a local store."""
        from zarr.codecs import ShardingCodec
        from zarr.storage import LocalStore

        codecs = arr.metadata.codecs if arr.metadata.zarr_format == 3 else ()
        if not isinstance(arr.store, LocalStore) or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return False
        sharding = codecs[0]
        inner = _codec_names(sharding.codecs)
        index = _codec_names(sharding.index_codecs)
        return (arr.fill_value == 0 and tuple(sharding.chunk_shape) == (1,) + tuple(arr.shape[1:])
                and tuple(arr.shards) == (arr.shards[0],) + tuple(arr.shape[1:])
                and sharding.index_location.value == "end"
                and [n for n, _ in inner] in (["BytesCodec", "ZstdCodec"], ["BytesCodec", "ZstdCodec", "Crc32cCodec"])
                and inner[0][1].get("endian") == "little"
                and [n for n, _ in index] == ["BytesCodec", "Crc32cCodec"] and index[0][1].get("endian") == "little")

    def _damaged(self, shard: int, problem: str) -> CacheError:
        rows = np.arange(shard * self.rps, min((shard + 1) * self.rps, self.arr.shape[0]))
        return CacheError(damage_message(self.where, {shard: rows}, self.items_of, problem))

    def _path(self, shard: int) -> str:
        path = self.paths.get(shard)
        if path is None:
            path = self.paths[shard] = str(self.root / self.encode_key((shard,) + (0,) * len(self.row_shape)))
        return path

    def _index(self, shard: int, fd: int) -> np.ndarray:
        index = self.indices.get(shard)
        if index is None:
            n = 16 * self.rps + 4
            size = os.fstat(fd).st_size
            raw = os.pread(fd, n, size - n) if size >= n else b""
            try:
                index = np.frombuffer(self.crc.decode(raw), dtype="<u8").reshape(self.rps, 2)
            except Exception as exc:  # short file or checksum mismatch
                raise self._damaged(shard, f"cannot be read (shard index: {exc or 'file too short'})") from None
            with self.lock:
                self.indices[shard] = index
        return index

    def _decode_into(self, buf: bytes, start: int, end: int, dest: np.ndarray) -> None:
        """One row's chunk, buf[start:end] (zstd frame [+ CRC32C]), decoded into `dest`; damage raises."""
        if self.row_crc:
            end -= 4
            if np.uint32(google_crc32c.value(buf[start:end])).tobytes() != buf[end:end + 4]:
                raise ValueError("stored and computed CRC32C differ")
        frame = memoryview(buf)[start:end]
        if _content_size(frame) == dest.nbytes:
            self.decompress(frame, dest)
        else:  # size unknown from the header, or wrong: decode to learn it
            raw = self.decompress(frame)
            if len(raw) != dest.nbytes:
                raise ValueError(f"decoded {len(raw)} bytes, expected {dest.nbytes}")
            dest[...] = np.frombuffer(raw, dtype=self.dtype).reshape(dest.shape)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows of one shard, in the given order."""
        out = np.empty((len(rows),) + self.row_shape, dtype=self.dtype)
        self.read_into(rows, out, np.arange(len(rows)))
        return out

    def read_into(self, rows: np.ndarray, out: np.ndarray, pos: np.ndarray) -> None:
        """Rows of one shard decoded into out[pos] (out: [n, *row_shape], C-contiguous)."""
        shard = int(rows[0]) // self.rps
        try:
            fd = os.open(self._path(shard), os.O_RDONLY)
        except FileNotFoundError:
            raise self._damaged(shard, "has no file (deleted while reading)") from None
        try:
            entries = self._index(shard, fd)[np.asarray(rows, dtype=np.int64) - shard * self.rps]
            written = entries[:, 0] != _EMPTY
            out[np.asarray(pos)[~written]] = 0  # never written: the fill value, as zarr returns it
            for run in _runs(entries, np.flatnonzero(written)):
                lo = int(entries[run[0], 0])
                buf = os.pread(fd, int(entries[run[-1]].sum()) - lo, lo)
                for j in run:
                    start = int(entries[j, 0]) - lo
                    try:
                        self._decode_into(buf, start, start + int(entries[j, 1]), out[pos[j]])
                    except Exception as exc:  # a damaged chunk: wrong size, not zstd, bad checksum
                        raise self._damaged(shard, f"cannot be read (row {int(rows[j])}: {exc})") from None
        finally:
            os.close(fd)


def _runs(entries: np.ndarray, todo: np.ndarray) -> list[np.ndarray]:
    """`todo` (indices into entries) sorted by offset, split where frames lie more than GAP bytes apart:
    one pread per run reads at most GAP wasted bytes between two frames it needs."""
    if not len(todo):
        return []
    todo = todo[np.argsort(entries[todo, 0], kind="stable")]
    ends = entries[todo, 0] + entries[todo, 1]
    breaks = np.flatnonzero(entries[todo[1:], 0].astype(np.int64) - ends[:-1].astype(np.int64) > GAP) + 1
    return np.split(todo, breaks)


def _content_size(frame: memoryview) -> int | None:
    """Decoded size from a zstd frame header (RFC 8878 §3.1.1.1), None when absent or not a frame."""
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = frame[4]
    single, fcs_flag = (fhd >> 5) & 1, fhd >> 6
    size = (0, 2, 4, 8)[fcs_flag] or single  # flag 0: one byte only in single-segment frames
    at = 5 + (not single) + (0, 1, 2, 4)[fhd & 3]
    if not size or len(frame) < at + size:
        return None
    value = int.from_bytes(frame[at:at + size], "little")
    return value + 256 if size == 2 else value
