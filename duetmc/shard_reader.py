"""Rows straight from local shard files: one positioned read and one zstd decode per row.

The streaming source reads rows in the sampler's order, scattered over every shard. Through zarr each
row costs a shard-index fetch and a trip through its async codec pipeline; here each shard's index
(16 bytes per row, checksummed) is read once and kept, and a row is `os.pread` of its byte range plus
a zstd decode, both outside the GIL. Only the layout duetmc's featurizers write is handled (a local
store; shards of whole rows; inner chunks of one row, little-endian bytes + zstd; index at the end,
bytes + crc32c); `ShardRows.supports` says whether an array has it, and the caller uses zarr otherwise.
Both paths return identical arrays (tests/test_feature_source.py).
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


def _codec_names(codecs) -> list[tuple[str, dict]]:
    return [(type(c).__name__, c.to_dict().get("configuration") or {}) for c in codecs]


class ShardRows:
    """Reads rows of one sharded feature array from its shard files."""

    def __init__(self, arr, where: str, items_of: ItemsOf):
        from numcodecs import CRC32C, Zstd

        self.arr, self.where, self.items_of = arr, where, items_of
        self.rps = rows_per_shard(arr)
        self.row_shape = tuple(arr.shape[1:])
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        self.root = Path(arr.store.root) / arr.store_path.path
        self.encode_key = arr.metadata.chunk_key_encoding.encode_chunk_key
        self.zstd, self.crc = Zstd(), CRC32C()
        # caches written since checksums were added carry a CRC32C after each row's zstd frame
        self.row_crc = _codec_names(arr.metadata.codecs[0].codecs)[-1][0] == "Crc32cCodec"
        self.indices: dict[int, np.ndarray] = {}  # shard -> [rps, 2] (offset, nbytes); 16 bytes per row
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

    def _path(self, shard: int) -> Path:
        return self.root / self.encode_key((shard,) + (0,) * len(self.row_shape))

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

    def _decode(self, chunk: bytes) -> bytes:
        if self.row_crc:
            chunk, stored = chunk[:-4], chunk[-4:]
            if np.uint32(google_crc32c.value(chunk)).tobytes() != stored:
                raise ValueError("stored and computed CRC32C differ")
        return self.zstd.decode(chunk)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows of one shard, in the given order."""
        shard = int(rows[0]) // self.rps
        out = np.zeros((len(rows),) + self.row_shape, dtype=self.dtype)
        try:
            fd = os.open(self._path(shard), os.O_RDONLY)
        except FileNotFoundError:
            raise self._damaged(shard, "has no file (deleted while reading)") from None
        try:
            index = self._index(shard, fd)
            for j, r in enumerate(rows):
                offset, nbytes = index[int(r) - shard * self.rps]
                if offset == _EMPTY:
                    continue  # never written: the fill value, as zarr returns it
                try:
                    raw = self._decode(os.pread(fd, int(nbytes), int(offset)))
                    out[j] = np.frombuffer(raw, dtype=self.dtype).reshape(self.row_shape)
                except Exception as exc:  # a damaged chunk: wrong size or not zstd
                    raise self._damaged(shard, f"cannot be read (row {int(r)}: {exc})") from None
        finally:
            os.close(fd)
        return out
