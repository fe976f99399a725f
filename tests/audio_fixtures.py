"""Test audio written on the fly: good clips in every format/rate/layout, and each kind of bad file.

Import from tests (`from audio_fixtures import write_sine, write_bad, ...`; pytest puts tests/ on
sys.path). Every writer takes a target path, writes the file and returns the path. Signals are
deterministic (fixed seeds), so two calls with the same arguments write the same samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

# soundfile format and subtype per file extension; mp3 needs libsndfile >= 1.1.
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}

# Every kind of bad input `write_bad` can make, with a substring of the reason the featurizer gives.
# ("truncated", a valid wav with bytes cut off its end, is not bad: what decodes is featurized, with a
# warning naming both lengths.)
BAD_KINDS = {
    "missing": "not found",  # the manifest points at no file
    "empty": "cannot decode",  # a zero-byte file
    "text": "cannot decode",  # a text file named .wav
    "header_only": "empty audio",  # a wav header promising 0 samples
    "silent": "silent",  # all zeros
    "too_short": "too short",  # fewer samples than one encoder frame (tiny HuBERT: 400 at 24 kHz)
}


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A sine at `freq` plus a little seeded noise, shaped [samples, channels] (channel k at freq*(k+1))."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    cols = [amp * np.sin(2 * np.pi * freq * (k + 1) * t) + 0.01 * rng.standard_normal(n) for k in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def noise(seconds: float, sr: int, channels: int = 1, amp: float = 0.2, seed: int = 0) -> np.ndarray:
    """Seeded uniform white noise in [-amp, amp], shaped [samples, channels]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-amp, amp, (int(round(seconds * sr)), channels)).astype(np.float32)


def write_audio(path: str | Path, data: np.ndarray, sr: int) -> Path:
    """Write [samples, channels] float data; the format follows the extension (wav, flac, ogg, mp3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, subtype = FORMATS[path.suffix.lstrip(".").lower()]
    with sf.SoundFile(str(path), "w", sr, data.shape[1] if data.ndim > 1 else 1, subtype, format=fmt) as f:
        for i in range(0, len(data), 1 << 15):  # one huge write crashes libsndfile's Vorbis encoder
            f.write(data[i:i + (1 << 15)])
    return path


def write_sine(path: str | Path, seconds: float = 1.0, sr: int = 24000, freq: float = 440.0,
               channels: int = 1, seed: int = 0) -> Path:
    """A sine clip (see `tone`) in the format of the path's extension."""
    return write_audio(path, tone(seconds, sr, freq, channels, seed=seed), sr)


def write_noise(path: str | Path, seconds: float = 1.0, sr: int = 24000, channels: int = 1, seed: int = 0) -> Path:
    return write_audio(path, noise(seconds, sr, channels, seed=seed), sr)


def write_bad(path: str | Path, kind: str, sr: int = 24000) -> Path:
    """Write one bad input of `kind` (a key of BAD_KINDS) at `path` ('missing' writes nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        path.unlink(missing_ok=True)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not audio\n" * 20)
    elif kind == "truncated":
        write_sine(path, seconds=1.0, sr=sr)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # the header still promises all samples
    elif kind == "header_only":
        sf.write(str(path), np.zeros((0, 1), dtype=np.float32), sr, format="WAV", subtype="PCM_16")
    elif kind == "silent":
        write_audio(path, np.zeros((sr, 1), dtype=np.float32), sr)
    elif kind == "too_short":
        write_audio(path, tone(0.01, sr), sr)  # 240 samples at 24 kHz
    else:
        raise ValueError(f"unknown bad kind {kind!r}; choose one of {sorted(BAD_KINDS)}")
    return path


def write_manifest_rows(path: str | Path, rows: list[dict]) -> Path:
    """Write raw manifest rows (dicts) as JSONL, without validation (tests feed it bad rows too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def clip_set(folder: str | Path, n: int, seconds: float = 1.0, sr: int = 24000, ext: str = "wav",
             prefix: str = "clip") -> list[dict]:
    """Write `n` distinct sine clips into `folder` and return manifest rows for them (relative paths)."""
    folder = Path(folder)
    rows = []
    for i in range(n):
        name = f"{prefix}{i:03d}.{ext}"
        write_sine(folder / name, seconds=seconds, sr=sr, freq=220.0 + 37.0 * i, seed=i)
        rows.append({"id": f"{prefix}{i:03d}", "audio": name, "tags": {"genre": ["rock"]},
                     "captions": [f"a tone number {i}"]})
    return rows
