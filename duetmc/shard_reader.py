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

_EMPTY = 2**64 - 1  # index entry of a chunk never written: the fill value
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
        self.header = b""  # zstd frame header (magic .. content size) of a row decoded once
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
        if self.header and buf.startswith(self.header, start):  # the frame header every row of this array has
            self.decompress(frame, dest)
        elif _content_size(frame) == dest.nbytes:
            self.decompress(frame, dest)
            self.header = bytes(frame[:_header_size(frame)])  # the rows' header, checked in C from now on
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
            entries = self._index(shard, fd)[np.asarray(rows) - shard * self.rps].tolist()  # Python ints: cheap below
            frames = sorted((*e, p, r) for e, p, r in zip(entries, np.asarray(pos).tolist(), np.asarray(rows).tolist()))
            run: list[tuple] = []
            for frame in frames:
                if frame[0] == _EMPTY:
                    out[frame[2]] = 0  # never written: the fill value, as zarr returns it
                    continue
                if run and frame[0] - (run[-1][0] + run[-1][1]) > GAP:
                    self._read_run(fd, shard, run, out)
                    run = []
                run.append(frame)
            if run:
                self._read_run(fd, shard, run, out)
        finally:
            os.close(fd)

    def _read_run(self, fd: int, shard: int, run: list[tuple], out: np.ndarray) -> None:
        """One pread covering frames (offset, nbytes, position, row) sorted by offset, each decoded into out."""
        lo = run[0][0]
        buf = os.pread(fd, run[-1][0] + run[-1][1] - lo, lo)
        for offset, nbytes, p, r in run:
            try:
                self._decode_into(buf, offset - lo, offset - lo + nbytes, out[p])
            except Exception as exc:  # a damaged chunk: wrong size, not zstd, bad checksum
                raise self._damaged(shard, f"cannot be read (row {r}: {exc})") from None


def _header_size(frame: memoryview) -> int:
    """Bytes from a zstd frame's magic number to the end of its content-size field (RFC 8878 §3.1.1.1)."""
    fhd = frame[4]
    single = (fhd >> 5) & 1
    return 5 + (not single) + (0, 1, 2, 4)[fhd & 3] + ((0, 2, 4, 8)[fhd >> 6] or single)


def _content_size(frame: memoryview) -> int | None:
    """Decoded size from a zstd frame header, None when absent or not a frame."""
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = frame[4]
    size = (0, 2, 4, 8)[fhd >> 6] or (fhd >> 5) & 1  # flag 0: one byte only in single-segment frames
    end = _header_size(frame)
    if not size or len(frame) < end:
        return None
    value = int.from_bytes(frame[end - size:end], "little")
    return value + 256 if size == 2 else value
