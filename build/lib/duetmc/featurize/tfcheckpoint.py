"""Read TensorFlow 1 checkpoints (``tf.train.Saver``, format V2) without TensorFlow.

A checkpoint with prefix ``P`` is two kinds of file:

- ``P.index``: an SSTable (the LevelDB table format) that maps each variable name to a
  ``BundleEntryProto`` (dtype, shape, shard, byte offset, size, CRC32C); the empty key holds a
  ``BundleHeaderProto`` (number of shards, endianness).
- ``P.data-SSSSS-of-NNNNN``: the raw little-endian tensor bytes, one file per shard.

Only the handful of protobuf fields needed are decoded here, by hand, so neither TensorFlow nor the
protobuf library is needed. Every block and every tensor is checked against its CRC32C
(google-crc32c comes with zarr). Snappy-compressed blocks, partitioned (sliced) variables,
big-endian bundles and string tensors are not supported and raise ``CheckpointError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
from duetmc.errors import DuetmcError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two padded BlockHandles (40 bytes) + 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # compression type byte + masked CRC32C

# tensorflow/core/framework/types.proto: the numeric types numpy can hold.
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


class CheckpointError(DuetmcError, ValueError):
    """A checkpoint file is missing, corrupt or uses a feature this reader does not support."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one variable's bytes live, as recorded in the ``.index`` file."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Return every variable of the checkpoint at ``prefix`` as a numpy array, keyed by name.

    ``prefix`` is what ``Saver.save`` was given: ``ckpt/model`` names ``ckpt/model.index`` and
    ``ckpt/model.data-00000-of-00001``. A directory names the files ``.index`` and ``.data-…``
    inside it (how the musicnn wheel ships its models).
    """
    prefix_str = _prefix_string(prefix)
    index_path = Path(prefix_str + ".index")
    num_shards, entries = read_index(index_path)
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name, entry in entries.items():
        if entry.shard_id not in shards:
            data_path = Path(f"{prefix_str}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
            if not data_path.is_file():
                raise CheckpointError(f"{data_path}: data file missing (needed by variable {name!r})")
            shards[entry.shard_id] = data_path.read_bytes()
        out[name] = _tensor(name, entry, shards[entry.shard_id], prefix_str)
    return out


def read_index(index_path: str | Path) -> tuple[int, dict[str, TensorEntry]]:
    """Parse a ``.index`` file: return (number of data shards, {variable name: TensorEntry})."""
    path = Path(index_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint index file not found")
    raw = path.read_bytes()
    if len(raw) < _FOOTER_SIZE:
        raise CheckpointError(f"{path}: {len(raw)} bytes is too short for a TF checkpoint index")
    footer = raw[-_FOOTER_SIZE:]
    (magic,) = struct.unpack("<Q", footer[-8:])
    if magic != _TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (bad table magic)")
    _meta_handle, pos = _block_handle(footer, 0, path)
    index_handle, _ = _block_handle(footer, pos, path)

    num_shards = None
    entries: dict[str, TensorEntry] = {}
    for _last_key, handle_bytes in _block_entries(_block(raw, index_handle, path), path):
        data_handle, _ = _block_handle(handle_bytes, 0, path)
        for key, value in _block_entries(_block(raw, data_handle, path), path):
            name = key.decode("utf-8")
            if name == "":
                num_shards = _header(value, path)
            else:
                entries[name] = _entry(name, value, path)
    if num_shards is None:
        raise CheckpointError(f"{path}: no bundle header (empty key) in the index")
    return num_shards, entries


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's (and LevelDB's) masked CRC32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _prefix_string(prefix: str | Path) -> str:
    p = Path(prefix)
    return str(p) + "/" if p.is_dir() else str(p)


def _tensor(name: str, entry: TensorEntry, shard: bytes, prefix: str) -> np.ndarray:
    where = f"{prefix}.data-{entry.shard_id:05d}: variable {name!r}"
    dtype = _DTYPES.get(entry.dtype)
    if dtype is None:
        raise CheckpointError(f"{where}: unsupported TensorFlow dtype enum {entry.dtype}")
    n = int(np.prod(entry.shape, dtype=np.int64))
    if n * np.dtype(dtype).itemsize != entry.size:
        raise CheckpointError(
            f"{where}: shape {entry.shape} of {np.dtype(dtype)} needs "
            f"{n * np.dtype(dtype).itemsize} bytes but the index says {entry.size}"
        )
    if entry.offset + entry.size > len(shard):
        raise CheckpointError(f"{where}: bytes {entry.offset}+{entry.size} lie past the end of the file")
    buf = shard[entry.offset : entry.offset + entry.size]
    if entry.crc32c is not None and masked_crc32c(buf) != entry.crc32c:
        raise CheckpointError(f"{where}: CRC32C mismatch, the data file is corrupt")
    return np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<")).reshape(entry.shape).copy()


def _block(raw: bytes, handle: tuple[int, int], path: Path) -> bytes:
    offset, size = handle
    end = offset + size + _BLOCK_TRAILER_SIZE
    if end > len(raw):
        raise CheckpointError(f"{path}: block at {offset} runs past the end of the file")
    contents = raw[offset : offset + size]
    compression = raw[offset + size]
    (crc,) = struct.unpack("<I", raw[offset + size + 1 : end])
    if masked_crc32c(raw[offset : offset + size + 1]) != crc:
        raise CheckpointError(f"{path}: CRC32C mismatch in the block at byte {offset}, the file is corrupt")
    if compression == 1:
        raise CheckpointError(f"{path}: snappy-compressed index blocks are not supported by this reader")
    if compression != 0:
        raise CheckpointError(f"{path}: unknown block compression type {compression}")
    return contents


def _block_entries(block: bytes, path: Path):
    """Yield (key, value) from one table block (prefix-compressed keys, restart array at the end)."""
    if len(block) < 4:
        raise CheckpointError(f"{path}: truncated table block")
    (num_restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise CheckpointError(f"{path}: table block restart array is larger than the block")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, path)
        unshared, pos = _varint(block, pos, path)
        value_len, pos = _varint(block, pos, path)
        if shared > len(key) or pos + unshared + value_len > end:
            raise CheckpointError(f"{path}: malformed table block entry at byte {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _block_handle(buf: bytes, pos: int, path: Path) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos, path)
    size, pos = _varint(buf, pos, path)
    return (offset, size), pos


def _varint(buf: bytes, pos: int, path: Path) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f"{path}: malformed varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, path: Path):
    """Yield (field number, value) of a protobuf message: ints for varint/fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, path)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, path)
        elif wire == 1:
            (value,) = struct.unpack("<Q", buf[pos : pos + 8])
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, path)
            value = buf[pos : pos + n]
            pos += n
        elif wire == 5:
            (value,) = struct.unpack("<I", buf[pos : pos + 4])
            pos += 4
        else:
            raise CheckpointError(f"{path}: unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise CheckpointError(f"{path}: truncated protobuf message")
        yield field, value


def _header(buf: bytes, path: Path) -> int:
    """BundleHeaderProto: num_shards = 1, endianness = 2 (0 = little)."""
    num_shards, endianness = 1, 0
    for field, value in _fields(buf, path):
        if field == 1:
            num_shards = value
        elif field == 2:
            endianness = value
    if endianness != 0:
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    return num_shards


def _entry(name: str, buf: bytes, path: Path) -> TensorEntry:
    """BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6, slices 7."""
    dtype = shard_id = offset = size = 0
    shape: tuple[int, ...] = ()
    crc = None
    for field, value in _fields(buf, path):
        if field == 1:
            dtype = value
        elif field == 2:
            shape = _shape(name, value, path)
        elif field == 3:
            shard_id = value
        elif field == 4:
            offset = value
        elif field == 5:
            size = value
        elif field == 6:
            crc = value
        elif field == 7:
            raise CheckpointError(f"{path}: variable {name!r} is partitioned (sliced); not supported")
    return TensorEntry(dtype, shape, shard_id, offset, size, crc)


def _shape(name: str, buf: bytes, path: Path) -> tuple[int, ...]:
    """TensorShapeProto: dim 2 (Dim: size 1), unknown_rank 3."""
    dims = []
    for field, value in _fields(buf, path):
        if field == 2:
            size = next((v for f, v in _fields(value, path) if f == 1), 0)
            dims.append(size)
        elif field == 3 and value:
            raise CheckpointError(f"{path}: variable {name!r} has unknown rank")
    return tuple(dims)
