"""Decoding audio in bounded memory: scan a file once, then read any window at the encoder's rate.

Nothing holds a whole track. `scan` streams an item once, in blocks, and records what the decoder
really returns (frames, peak, finiteness); the plan is made from that, never from the header alone,
because headers disagree with their audio (truncated FLAC/WAV, MP3 estimates). `WindowReader` then
decodes an item sequentially and resamples each window from a short stretch of source audio with a
margin of whole resampler frames on both sides, so every window equals the same span of the
whole-track resample (measured: tests/test_decode.py). Compressed formats are read forward, never
seeked: libsndfile's seek in OGG Vorbis and MP3 lands up to thousands of samples off (measured with
libsndfile 1.2.2), which would shift windows silently.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import torch

from duetmc.errors import DuetmcError
from duetmc.manifest import Item

BLOCK = 1 << 16  # source frames decoded per read: bounds the decoder's transient memory
EXACT_SEEK = {"WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF", "CAF"}  # libsndfile seeks these to the sample
TOLERANCE_S = 0.01  # header/decoder length differences below this are not worth a warning


class AudioError(DuetmcError, ValueError):
    """One item's audio cannot be used; the message says why."""


@dataclass(frozen=True)
class Scan:
    """What the decoder returns for one item (the segment between its start and end)."""

    sample_rate: int
    frames: int  # decodable frames of the item's segment
    warning: str = ""  # the header promised something else

    def to_json(self) -> dict:
        return asdict(self)


def resampled_length(n: int, orig: int, new: int) -> int:
    """Samples at `new` Hz for `n` at `orig` Hz: the exact ceiling, which WindowReader always delivers."""
    if orig == new:
        return n
    g = math.gcd(orig, new)
    return -(-(new // g) * n // (orig // g))


def _header_promise(header_log: str) -> tuple[int, int] | None:
    """(promised, present) data bytes when libsndfile's header log shows a WAV shortened on disk."""
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", header_log, re.M)
    if m is None:
        return None
    promised, present = int(m.group(1)), int(m.group(2))
    if present < promised and promised not in (0, 0xFFFFFFFF):  # a streamed WAV never knew its size
        return promised, present
    return None


def _open(item: Item) -> sf.SoundFile:
    if not item.audio.exists():
        raise AudioError(f"file not found: {item.audio}")
    try:
        return sf.SoundFile(str(item.audio))
    except Exception as exc:
        raise AudioError(f"cannot decode ({type(exc).__name__}: {exc})") from None


def _segment(item: Item, sr: int, frames: int) -> tuple[int, int]:
    s0 = int(round((item.start or 0.0) * sr))
    s1 = frames if item.end is None else min(frames, int(round(item.end * sr)))
    if s0 >= frames:
        raise AudioError(f"start {item.start} s is beyond the end of the file ({frames / sr:.2f} s)")
    return s0, s1


def _skip(f: sf.SoundFile, skip: int) -> bool:
    if f.format in EXACT_SEEK:
        f.seek(skip)
        return True
    while skip > 0:  # compressed formats: decode forward, a seek would land off the sample
        got = len(f.read(min(BLOCK, skip), dtype="float32", always_2d=True))
        if got == 0:
            return False
        skip -= got
    return True


def _mono(data: np.ndarray) -> np.ndarray:
    """`data.mean(axis=1)`, bit for bit; numpy's strided row reduction is most of a stereo block's decode
    time, and for fewer than 8 channels it adds them in order, as this does."""
    c = data.shape[1]
    if c >= 8:
        return data.mean(axis=1)
    out = data[:, 0].copy()
    for k in range(1, c):
        out += data[:, k]
    if c > 1:
        out /= np.float32(c)
    return out


def _blocks(item: Item, skip: int, count: int):
    """Mono float32 blocks of `count` frames after `skip`; stops where the decoder stops.

    A decoder error (a truncated FLAC "lost sync") loses the block it happened in, so the stretch is
    read again in smaller blocks from a fresh decoder, down to 64 frames, and the audio before the
    error is kept."""
    block, pos = BLOCK, 0
    while True:
        with _open(item) as f:
            if not _skip(f, skip + pos):
                return
            try:
                while pos < count:
                    data = f.read(min(block, count - pos), dtype="float32", always_2d=True)
                    if len(data) == 0:
                        return
                    pos += len(data)
                    yield _mono(data)
                return
            except sf.LibsndfileError:
                if block <= 64:
                    return
                block //= 16


def scan(item: Item) -> Scan:
    """Stream the item once: decodable length, finiteness and level. AudioError for unusable audio."""
    with _open(item) as f:
        sr, header, log = f.samplerate, f.frames, f.extra_info
    if header <= 0:
        raise AudioError("empty audio (0 samples)")
    s0, s1 = _segment(item, sr, header)
    n, peak = 0, 0.0
    for block in _blocks(item, s0, s1 - s0):
        top = float(np.abs(block).max())  # NaN or Inf if any sample is: one pass for both checks
        if not math.isfinite(top):
            raise AudioError("contains NaN or Inf samples")
        n += len(block)
        peak = max(peak, top)
    if n == 0:
        raise AudioError("cannot decode: the decoder returns no audio")
    if peak < 1e-5:
        raise AudioError("silent (every sample is below -100 dBFS)")
    warning, promise = "", _header_promise(log)
    if promise is not None:
        warning = (f"truncated: the header promises {promise[0]} bytes of audio, the file holds {promise[1]}; "
                   f"featurized the {n / sr:.2f} s that decode")
    elif (s1 - s0) - n > TOLERANCE_S * sr:
        warning = (f"the header promises {(s1 - s0) / sr:.2f} s, the decoder returns {n / sr:.2f} s; "
                   "featurized what decodes")
    return Scan(sr, n, warning)


class Resampler:
    """Any span of the whole-signal torchaudio resample, computed from a short stretch of input."""

    def __init__(self, orig: int, new: int):
        g = math.gcd(orig, new)
        self.orig, self.new, self.o, self.m = orig, new, orig // g, new // g
        width = math.ceil(6 * self.o / (min(self.o, self.m) * 0.99))  # torchaudio's sinc half-width
        self.margin = -(-width // self.o) + 2  # whole frames of context on each side

    def source_span(self, a: int, length: int) -> tuple[int, int]:
        """Source samples [lo, hi) that output samples [a, a+length) depend on (before clipping)."""
        if self.orig == self.new:
            return a, a + length
        k0 = a // self.m - self.margin
        k1 = -(-(a + length) // self.m) + self.margin
        return max(0, k0) * self.o, k1 * self.o

    def window(self, x: np.ndarray, lo: int, a: int, length: int, at_end: bool) -> np.ndarray:
        """Output samples [a, a+length) from source samples x = signal[lo: lo+len(x)].

        `at_end`: x reaches the signal's end, which is padded with zeros as the whole resample is."""
        if self.orig == self.new:
            return x[a - lo: a - lo + length]
        import torchaudio.functional as AF

        if at_end:
            x = np.concatenate([x, np.zeros((self.margin + 1) * self.o, dtype=np.float32)])
        y = AF.resample(torch.from_numpy(np.ascontiguousarray(x)), self.orig, self.new).numpy()
        off = a - (lo // self.o) * self.m
        return y[off: off + length]


class WindowReader:
    """Reads windows of one item in increasing order at the encoder's rate, with bounded memory.

    A request behind what is still buffered reopens the file (never needed when requests come in
    plan order; `keep` source samples are retained behind the read point for prefetching threads).
    """

    def __init__(self, item: Item, scan: Scan, target_sr: int, keep: int = 0):
        self.item, self.scan, self.keep = item, scan, keep
        self.rs = Resampler(scan.sample_rate, target_sr)
        self.lock = threading.Lock()
        self._reopen()

    def _reopen(self) -> None:
        with _open(self.item) as f:
            s0, _ = _segment(self.item, f.samplerate, f.frames)
        self._gen = _blocks(self.item, s0, self.scan.frames)
        self.buf, self.lo = np.zeros(0, dtype=np.float32), 0

    def close(self) -> None:
        self._gen.close()  # closes the file the generator holds

    def read(self, a: int, length: int) -> np.ndarray:
        """Output samples [a, a+length); AudioError if the file now decodes shorter than planned."""
        with self.lock:
            lo, hi = self.rs.source_span(a, length)
            hi = min(hi, self.scan.frames)
            if lo < self.lo:
                self.close()
                self._reopen()
            blocks, end = [self.buf], self.lo + len(self.buf)
            while end < hi:
                block = next(self._gen, None)
                if block is None:
                    raise AudioError(f"the file decodes shorter than when it was planned "
                                     f"({end / self.scan.sample_rate:.2f} s); rerun featurize to re-plan it")
                blocks.append(block)
                end += len(block)
            if len(blocks) > 1:  # one copy, not one per block
                self.buf = np.concatenate(blocks)
            x = self.buf[lo - self.lo: hi - self.lo]
            out = self.rs.window(x, lo, a, length, at_end=hi == self.scan.frames)
            drop = max(0, min(lo - self.keep, hi) - self.lo)  # keep a tail for requests slightly behind
            if drop:
                self.buf, self.lo = self.buf[drop:], self.lo + drop
        if len(out) != length or not np.isfinite(out).all():
            raise AudioError(f"window at {a} could not be read whole ({len(out)} of {length} samples)")
        return np.ascontiguousarray(out, dtype=np.float32)


def to_encoder_input(data: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """In-memory samples [S, channels] -> float32 mono at the encoder's rate, with the checks `scan`
    makes on files (DuetModel.embed_audio on arrays)."""
    import torchaudio.functional as AF

    mono = np.asarray(data, dtype=np.float32).mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError("contains NaN or Inf samples")
    if len(mono) == 0 or float(np.abs(mono).max()) < 1e-5:
        raise AudioError("silent (every sample is below -100 dBFS)")
    if sr != target_sr:
        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, target_sr).numpy()
    return mono


def load_audio(item: Item, target_sr: int) -> np.ndarray:
    """The whole item as float32 mono at `target_sr` (a convenience for short clips and benchmarks)."""
    s = scan(item)
    reader = WindowReader(item, s, target_sr)
    try:
        return reader.read(0, resampled_length(s.frames, s.sample_rate, target_sr))
    finally:
        reader.close()
