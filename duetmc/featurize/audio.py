"""Audio featurizer: decode, window, run a locked encoder, time-pool its hidden states, write the cache.

Decoding uses soundfile (wav, flac, ogg, mp3, opus), downmixes to mono and resamples with torchaudio.
Tracks longer than the window are cut into windows; the last window is aligned to the track's end, so
every window of a long track is full length and nothing is ever padded (MERT's group norm makes padded
and unpadded batches differ, DESIGN.md §5). Clips shorter than the window form a window of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from duetmc import cache_spec
from duetmc.cache_spec import AudioSettings, CacheError
from duetmc.featurize.hf import EncoderLoadError, duetmc_home, strict_from_pretrained
from duetmc.featurize.rows import RunSummary, fixed_batches, run_rows
from duetmc.manifest import Item, load_manifest
from duetmc.errors import DuetmcError


class AudioError(DuetmcError, ValueError):
    """One item's audio cannot be used; the message says why."""


# --- encoders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioEncoderSpec:
    family: str  # hubert | musicnn | tiny-hubert
    source: str  # HF id, or a name the family resolves
    sample_rate: int
    normalize: bool = False  # zero-mean unit-variance input, as the model's feature extractor does


AUDIO_ENCODERS: dict[str, AudioEncoderSpec] = {
    "mert-v1-95m": AudioEncoderSpec("hubert", "m-a-p/MERT-v1-95M", 24000, normalize=True),
    "mert-v1-330m": AudioEncoderSpec("hubert", "m-a-p/MERT-v1-330M", 24000, normalize=True),
    "musicnn-mtt": AudioEncoderSpec("musicnn", "musicnn-mtt", 16000),
    "musicnn-msd": AudioEncoderSpec("musicnn", "musicnn-msd", 16000),
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


# --- decoding and windows --------------------------------------------------------------------


def resampled_length(n: int, orig: int, new: int) -> int:
    """Output length of torchaudio.functional.resample."""
    if orig == new:
        return n
    g = math.gcd(orig, new)
    return int(math.ceil(new // g * n / (orig // g)))


def window_layout(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, length) in samples. The last window ends at the track's end; short tracks: one window."""
    if n <= window:
        return [(0, n)]
    count = math.ceil((n - window) / hop) + 1
    return [(min(k * hop, n - window), window) for k in range(count)]


def _segment(item: Item, sr: int, frames: int) -> tuple[int, int]:
    s0 = int(round((item.start or 0.0) * sr))
    s1 = frames if item.end is None else min(frames, int(round(item.end * sr)))
    if s0 >= frames:
        raise AudioError(f"start {item.start} s is beyond the end of the file ({frames / sr:.2f} s)")
    return s0, s1


def _check_not_truncated(header_log: str) -> None:
    """libsndfile silently shortens a truncated WAV to the bytes present; its header log keeps the promise."""
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", header_log, re.M)
    if m is None:
        return
    promised, present = int(m.group(1)), int(m.group(2))
    if present < promised and promised not in (0, 0xFFFFFFFF):  # a streamed WAV never knew its size
        raise AudioError(f"truncated: the header promises {promised} bytes of audio, the file holds {present}")


def probe(item: Item, target_sr: int) -> int:
    """Samples the item will have at the encoder's rate, from the header only."""
    if not item.audio.exists():
        raise AudioError(f"file not found: {item.audio}")
    try:
        info = sf.info(str(item.audio))
    except Exception as exc:
        raise AudioError(f"not a readable audio file ({exc})") from None
    if info.frames <= 0:
        raise AudioError("empty audio (0 samples)")
    _check_not_truncated(info.extra_info)
    s0, s1 = _segment(item, info.samplerate, info.frames)
    return resampled_length(s1 - s0, info.samplerate, target_sr)


def load_audio(item: Item, target_sr: int) -> np.ndarray:
    """Decode, downmix and resample one item to float32 mono; AudioError says what is wrong."""
    if not item.audio.exists():
        raise AudioError(f"file not found: {item.audio}")
    try:
        with sf.SoundFile(str(item.audio)) as f:
            sr, frames = f.samplerate, f.frames
            if frames <= 0:
                raise AudioError("empty audio (0 samples)")
            _check_not_truncated(f.extra_info)
            s0, s1 = _segment(item, sr, frames)
            f.seek(s0)
            data = f.read(s1 - s0, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"cannot decode ({type(exc).__name__}: {exc})") from None
    if len(data) < (s1 - s0) - sr // 100:
        raise AudioError(f"truncated: the header promises {s1 - s0} samples, only {len(data)} could be read")
    return to_encoder_input(data, sr, target_sr)


def to_encoder_input(data: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Decoded samples [S, channels] -> float32 mono at the encoder's rate (also for in-memory waveforms)."""
    import torchaudio.functional as AF

    mono = np.asarray(data, dtype=np.float32).mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError("contains NaN or Inf samples")
    if len(mono) == 0 or float(np.abs(mono).max()) < 1e-5:
        raise AudioError("silent (every sample is below -100 dBFS)")
    if sr != target_sr:
        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, target_sr).numpy()
    return mono


def window_features(encoder: AudioEncoder, wavs: list[np.ndarray], layers: list[int], tokens: int,
                    device: str = "cpu", dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Equal-length windows -> the cached features [W, layers, tokens, D] in float32 (before float16 storage)."""
    x = torch.from_numpy(np.stack(wavs)).to(device, dtype)
    hidden = encoder(x)[:, layers]
    return time_pool(hidden.float(), tokens).cpu().numpy()


def time_pool(hidden: torch.Tensor, tokens: int) -> torch.Tensor:
    """[B, L, F, D] -> [B, L, tokens, D] by averaging equal spans of frames."""
    b, l, f, d = hidden.shape
    x = hidden.reshape(b * l, f, d).transpose(1, 2)
    x = torch.nn.functional.adaptive_avg_pool1d(x, tokens)
    return x.transpose(1, 2).reshape(b, l, tokens, d)


# --- the cache group -------------------------------------------------------------------------

COMPUTE_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                  "fp16": torch.float16, "float16": torch.float16}


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
    batch_size: int = 8
    workers: int = 2
    shard: str | None = None
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype; bf16 or fp16 on GPU. Features are stored as float16.
    rows_per_shard: int = cache_spec.DEFAULT_ROWS_PER_SHARD
    progress: bool = True

    @property
    def settings(self) -> AudioSettings:
        return AudioSettings(self.encoder, self.window_s, self.hop_s, self.tokens,
                             None if self.layers is None else tuple(self.layers))


@contextlib.contextmanager
def plan_lock(cache: str):
    """Serialise planning between processes on a local cache (remote stores: plan once, up front)."""
    local = "://" not in cache or cache.startswith("file://")
    if not local:
        yield
        return
    root = Path(cache.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    # lock the directory itself: a lock file inside the store would make plain zarr warn about it
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_audio_cache(config: AudioFeaturizeConfig, encoder: AudioEncoder | None = None,
                        items: list[Item] | None = None):
    """Create the group's arrays once (idempotent). Returns (group, items, encoder, row_lengths)."""
    items = items if items is not None else load_manifest(config.manifest)
    encoder = encoder or load_audio_encoder(config.encoder, config.encoder_path, config.revision)
    settings = config.settings
    sr = encoder.sample_rate
    win, hop = int(round(settings.window_s * sr)), int(round(settings.hop * sr))
    layers = cache_spec.resolve_layers(settings.layers, encoder.n_layers, encoder.name)
    with plan_lock(config.cache):
        root = cache_spec.open_root(config.cache, mode="a")
        key = settings.key()
        # provenance is written last, so a group without it is a plan cut short (killed): plan it again
        if "audio" in root and key in root["audio"] and "encoder" in root["audio"][key].attrs:
            group = root["audio"][key]
            _check_existing(group, items, encoder, config)
            return group, items, encoder, np.asarray(group["window_len"][:])
        layout, plan_fail = [], {}
        for i, item in enumerate(items):
            try:
                layout.append(window_layout(probe(item, sr), win, hop))
            except AudioError as exc:
                layout.append([(0, 0)])
                plan_fail[i] = str(exc)
        n_rows = sum(map(len, layout))
        rps = config.rows_per_shard
        group = root.require_group("audio").require_group(key)
        mk = functools.partial(cache_spec.create_array, group)
        L, T, D = len(layers), settings.tokens, encoder.dim
        mk("features", (n_rows, L, T, D), "float16", (1, L, T, D), ["window", "layer", "token", "dim"],
           shards=(rps, L, T, D), fill_value=0)
        mk("done", (n_rows,), "bool", (rps,), ["window"], fill_value=False)
        mk("failure", (n_rows,), str, (rps,), ["window"])
        wi = mk("window_item", (n_rows,), "int32", (rps,), ["window"])
        ws = mk("window_start", (n_rows,), "float32", (rps,), ["window"])
        wl = mk("window_len", (n_rows,), "int64", (rps,), ["window"])
        ids = mk("ids", (len(items),), str, (max(1, len(items)),), ["item"])
        ir = mk("item_rows", (len(items), 2), "int64", (max(1, len(items)), 2), ["item", "pair"])
        mk("split", (len(items),), str, (max(1, len(items)),), ["item"])[:] = np.array(
            [it.split or "" for it in items], dtype=object)
        # ground truth for zero-shot tag retrieval, as JSON {category: [tags]}
        mk("tags", (len(items),), str, (max(1, len(items)),), ["item"])[:] = np.array(
            [json.dumps(it.tags, ensure_ascii=False) for it in items], dtype=object)
        row_item = np.concatenate([np.full(len(lay), i, dtype=np.int32) for i, lay in enumerate(layout)])
        wi[:] = row_item
        ws[:] = np.array([s / sr for lay in layout for s, _ in lay], dtype=np.float32)
        lengths = np.array([n for lay in layout for _, n in lay], dtype=np.int64)
        wl[:] = lengths
        ids[:] = np.array([it.id for it in items])
        counts = np.array([len(lay) for lay in layout])
        ir[:] = np.stack([np.cumsum(counts) - counts, counts], axis=1)
        if plan_fail:
            fail = np.full(n_rows, "", dtype=object)
            for i, reason in plan_fail.items():
                fail[np.flatnonzero(row_item == i)] = reason
            group["failure"][:] = fail
        group.attrs.update(cache_spec.provenance(settings, encoder.info, {
            "modality": "audio", "sample_rate": sr, "window_samples": win, "hop_samples": hop,
            "layers": layers, "n_layers_encoder": encoder.n_layers, "dim": encoder.dim,
            "rows_per_shard": rps, "batch_size": config.batch_size, "min_samples": encoder.min_samples,
            "compute_dtype": config.dtype,
            "manifest": str(Path(config.manifest).resolve()) if config.manifest else None,
        }))
        return group, items, encoder, lengths


def _check_existing(group, items: list[Item], encoder: AudioEncoder, config: AudioFeaturizeConfig) -> None:
    attrs = dict(group.attrs)
    stored_ids = cache_spec.read_strings(group["ids"]).tolist()
    if stored_ids != [it.id for it in items]:
        differ = len(set(stored_ids) ^ {it.id for it in items})
        raise CacheError(
            f"{config.cache}: audio/{group.basename} was planned for another manifest "
            f"({len(stored_ids)} ids stored, {len(items)} given, {differ} differ). Use a new --cache, "
            "or delete that group to re-plan it."
        )
    cache_spec.check_compute_dtype(group, config.dtype, config.cache)
    sha = attrs["encoder"]["weights_sha256"]
    if sha != encoder.info["weights_sha256"]:
        raise CacheError(
            f"{config.cache}: audio/{group.basename} was written by {attrs['encoder']['source']} with weights "
            f"sha256 {sha[:12]}…, but the loaded {encoder.name} has {encoder.info['weights_sha256'][:12]}…. "
            "Mixing encoders in one array is refused; use another --cache."
        )


def featurize_audio(config: AudioFeaturizeConfig) -> RunSummary:
    """Featurize this process's shards (all of them without --shard). Resumable; never stops on bad audio."""
    group, items, encoder, lengths = prepare_audio_cache(config)
    dtype = COMPUTE_DTYPES[config.dtype]
    encoder.to(config.device, dtype)
    attrs = dict(group.attrs)
    layers, tokens, sr = attrs["layers"], attrs["settings"]["tokens"], attrs["sample_rate"]
    batch_size = int(attrs["batch_size"])  # batches are part of the plan: resumes write identical bytes
    row_item = np.asarray(group["window_item"][:])
    row_start = np.round(np.asarray(group["window_start"][:], dtype=np.float64) * sr).astype(np.int64)
    task, n_tasks = cache_spec.parse_shard(config.shard)
    n_shards = len(cache_spec.shard_ranges(len(row_item), int(attrs["rows_per_shard"])))
    shards = cache_spec.task_shards(n_shards, task, n_tasks)

    @functools.lru_cache(maxsize=16)
    def decoded(i: int):
        try:
            return load_audio(items[i], sr)
        except AudioError as exc:
            return exc

    def prepare(rows):
        out, failed = [], {}
        for r in rows:
            audio = decoded(int(row_item[r]))
            n = int(lengths[r])
            if isinstance(audio, AudioError):
                failed[r] = str(audio)
            elif n < encoder.min_samples:
                failed[r] = (f"too short: {n / sr:.4f} s, the encoder needs at least "
                             f"{encoder.min_samples / sr:.4f} s")
            elif len(audio) < row_start[r] + n:
                failed[r] = "audio is shorter than when the cache was planned; delete the group and re-plan"
            else:
                out.append(audio[row_start[r]: row_start[r] + n])
                continue
            out.append(None)
        return out, failed

    def compute(rows, prepared):
        wavs, failed = prepared
        ok = [k for k, w in enumerate(wavs) if w is not None]
        feats = np.zeros((len(rows), len(layers), tokens, encoder.dim), dtype=np.float32)
        if ok:
            feats[ok] = window_features(encoder, [wavs[k] for k in ok], layers, tokens, config.device, dtype)
        if not np.isfinite(feats).all():
            bad = [rows[k] for k in ok if not np.isfinite(feats[k]).all()]
            failed.update({r: "encoder produced NaN/Inf" for r in bad})
            feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
        return feats, failed

    ids = cache_spec.read_strings(group["ids"])
    summary = run_rows(
        group, shards,
        batches_of=lambda lo, hi: fixed_batches(lengths, lo, hi, batch_size),
        prepare=prepare, compute=compute, label=lambda r: str(ids[row_item[r]]),
        workers=config.workers, progress=config.progress, desc=f"audio {encoder.name}",
    )
    summary.failures = list(dict(summary.failures).items())
    return summary

