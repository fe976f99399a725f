"""A clip's audio segment, decoded from its original file and encoded for a browser.

The browser format is WAV, 16-bit PCM: every browser plays it, it needs no encoder library beyond
libsndfile, its length is exact before anything is sent (so byte ranges are simple), and encoding is
a copy, not a compression pass. Clips are seconds long, so the size (sample rate x 2 bytes x
channels) stays small; more than two channels are mixed down to stereo.

Encoded segments live in a bounded in-memory LRU keyed by an ETag made from the file's identity
(path, size, modification time) and the segment, so a changed file is never served stale.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from duetmc.errors import DuetmcError

MEDIA_TYPE = "audio/wav"
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


class SegmentError(DuetmcError, OSError):
    """A clip's audio file is missing, unreadable, or its segment lies outside the file."""


@dataclass(frozen=True)
class Segment:
    """`path`'s audio from `start` to `end` seconds (None: the file's beginning / end)."""

    path: str
    start: float | None = None
    end: float | None = None


def etag(seg: Segment) -> str:
    try:
        st = os.stat(seg.path)
    except OSError as exc:
        raise SegmentError(f"{seg.path}: {exc.strerror or exc}; the index points to a file that is gone") from exc
    key = f"{seg.path}|{st.st_size}|{st.st_mtime_ns}|{seg.start}|{seg.end}"
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def encode_segment(seg: Segment) -> bytes:
    """Decode `seg` from its file and return it as a WAV (PCM 16) file in memory."""
    try:
        with sf.SoundFile(seg.path) as f:
            sr = f.samplerate
            first = int(round((seg.start or 0.0) * sr))
            last = f.frames if seg.end is None else min(f.frames, int(round(seg.end * sr)))
            if first >= f.frames or last <= first:
                raise SegmentError(f"{seg.path}: segment {seg.start}-{seg.end} s lies outside the file "
                                   f"({f.frames / sr:.2f} s); rebuild the index from the current files")
            f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        if isinstance(exc, SegmentError):
            raise
        raise SegmentError(f"{seg.path}: cannot decode ({exc}); check the file") from exc
    if data.shape[1] > 2:
        data = np.stack([data[:, 0::2].mean(axis=1), data[:, 1::2].mean(axis=1)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class SegmentCache:
    """Encoded segments by ETag, least recently used first out, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, seg: Segment) -> tuple[bytes, str]:
        """The segment's WAV bytes and ETag, encoded now or taken from the cache."""
        tag = etag(seg)
        with self._lock:
            data = self._items.get(tag)
            if data is not None:
                self._items.move_to_end(tag)
                return data, tag
        data = encode_segment(seg)
        self._put(tag, data)
        return data, tag

    def _put(self, tag: str, data: bytes) -> None:
        if len(data) > self.max_bytes:  # larger than the whole budget: serve it, do not keep it
            return
        with self._lock:
            if tag in self._items:
                return
            self._items[tag] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
