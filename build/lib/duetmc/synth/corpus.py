"""The synthetic labelled corpus: many seeded songs rendered to WAV, with a manifest.

Layout of the output folder:
  synth_config.json            the config (a rerun must match it)
  manifest.jsonl               every item, tags by category, train/val/test split
  manifest_heldout_sf.jsonl    the test items again, rendered with the held-out soundfont
  audio/<id>.wav, <id>.mid     24 kHz mono PCM-16 clip and the MIDI it was rendered from
  audio_heldout_sf/<id>.wav    held-out-soundfont renders of the test items

Item i depends only on (seed, i): its labels, notes and split are drawn from
`default_rng([seed, i])` and each clip is rendered by a fresh synth, so the corpus is the same for
any worker count, and growing `n_items` keeps the earlier items. Existing files are reused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from duetmc.manifest import SPLITS, Item, write_manifest
from duetmc.synth.compose import compose, draw_spec, song_tags
from duetmc.synth.render import FLUIDR3_GM, TIMGM6MB, Renderer, check_soundfont
from duetmc.errors import DuetmcError

# bump when a change to composing or rendering makes old files stale; reruns then refuse the old dir
GENERATOR_VERSION = 1
SPLIT_BLOCK = 10  # splits are dealt out exactly within each block of 10 consecutive items
HELDOUT_SUFFIX = "-heldout-sf"
CONFIG_NAME = "synth_config.json"
MANIFEST_NAME = "manifest.jsonl"
HELDOUT_MANIFEST_NAME = "manifest_heldout_sf.jsonl"


class SynthError(DuetmcError, ValueError):
    """A bad synth config, or an output folder made with a different one."""


@dataclass
class SynthConfig:
    out: Path
    n_items: int = 200
    seed: int = 0
    seconds: float = 10.0
    sample_rate: int = 24000
    workers: int = 1
    soundfont: Path = FLUIDR3_GM
    heldout_soundfont: Path | None = TIMGM6MB  # None: no held-out-timbre split
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test; rounded to tenths

    def __post_init__(self):
        self.out = Path(self.out)
        self.soundfont = Path(self.soundfont)
        self.heldout_soundfont = None if self.heldout_soundfont is None else Path(self.heldout_soundfont)
        self.splits = tuple(float(f) for f in self.splits)
        if self.n_items < 1:
            raise SynthError(f"n_items must be at least 1, got {self.n_items}")
        if not self.seconds > 0:
            raise SynthError(f"seconds must be positive, got {self.seconds}")
        if self.workers < 1:
            raise SynthError(f"workers must be at least 1, got {self.workers}")
        if len(self.splits) != 3 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-6:
            raise SynthError(f"splits must be three non-negative fractions (train, val, test) summing to 1, got {self.splits}")

    def content(self) -> dict:
        """The fields that decide the files' contents (not the item count or the worker count)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("out", "n_items", "workers")}
        d["soundfont"] = str(self.soundfont)
        d["heldout_soundfont"] = None if self.heldout_soundfont is None else str(self.heldout_soundfont)
        d["splits"] = list(self.splits)
        d["generator_version"] = GENERATOR_VERSION
        return d


@dataclass
class SynthReport:
    out: Path
    manifest: Path
    heldout_manifest: Path | None
    config_path: Path
    n_items: int  # items in the manifest
    n_rendered: int  # items that needed rendering this run
    n_cached: int  # items whose files were all there already
    splits: dict[str, int]
    seconds_wall: float
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item id, error)

    @property
    def items_per_s(self) -> float:
        return self.n_rendered / self.seconds_wall if self.seconds_wall > 0 else float("nan")

    def to_json(self) -> dict:
        d = asdict(self)
        d["items_per_s"] = self.items_per_s
        return d


def item_id(index: int) -> str:
    return f"synth-{index:06d}"


def split_of(seed: int, index: int, fractions: tuple[float, float, float]) -> str:
    """Splits dealt exactly within each block of SPLIT_BLOCK items, shuffled by the seed."""
    counts = _block_counts(fractions)
    block, pos = divmod(index, SPLIT_BLOCK)
    rank = int(np.random.default_rng([seed, block, 1]).permutation(SPLIT_BLOCK)[pos])
    return SPLITS[int(np.searchsorted(np.cumsum(counts), rank, side="right"))]


def _block_counts(fractions) -> list[int]:
    """Largest-remainder rounding of fractions * SPLIT_BLOCK."""
    raw = [f * SPLIT_BLOCK for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(3), key=lambda i: counts[i] - raw[i])[: SPLIT_BLOCK - sum(counts)]:
        counts[i] += 1
    return counts


def synth_corpus(config: SynthConfig, progress: bool = True) -> SynthReport:
    """Render the corpus into `config.out`, reusing files a previous run with this config wrote."""
    from tqdm import tqdm

    check_soundfont(config.soundfont)
    if config.heldout_soundfont is not None:
        check_soundfont(config.heldout_soundfont)
    out = config.out
    config_path = _claim_dir(config)
    t0 = time.perf_counter()
    results: list[dict] = []
    with tqdm(total=config.n_items, desc="synth", unit="clip", disable=not progress) as bar:
        if config.workers == 1:
            _init_worker(config)
            for i in range(config.n_items):
                results.append(_make_item(i))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe once threads (torch, tqdm) exist
            with ctx.Pool(config.workers, initializer=_init_worker, initargs=(config,)) as pool:
                for r in pool.imap_unordered(_make_item, range(config.n_items), chunksize=2):
                    results.append(r)
                    bar.update()
    seconds_wall = time.perf_counter() - t0
    results.sort(key=lambda r: r["index"])

    ok = [r for r in results if r["error"] is None]
    items = [Item(id=r["id"], audio=out / r["audio"], tags=r["tags"], split=r["split"]) for r in ok]
    manifest = write_manifest(items, out / MANIFEST_NAME)
    heldout_manifest = None
    held = [Item(id=r["id"] + HELDOUT_SUFFIX, audio=out / r["heldout_audio"], tags=r["tags"], split="test")
            for r in ok if r["heldout_audio"]]
    if held:
        heldout_manifest = write_manifest(held, out / HELDOUT_MANIFEST_NAME)
    elif (out / HELDOUT_MANIFEST_NAME).exists():  # a stale one from an earlier config would mislead
        (out / HELDOUT_MANIFEST_NAME).unlink()
    return SynthReport(
        out=out,
        manifest=manifest,
        heldout_manifest=heldout_manifest,
        config_path=config_path,
        n_items=len(items),
        n_rendered=sum(r["rendered"] for r in ok),
        n_cached=sum(not r["rendered"] for r in ok),
        splits={s: sum(it.split == s for it in items) for s in SPLITS},
        seconds_wall=seconds_wall,
        failed=[(r["id"], r["error"]) for r in results if r["error"] is not None],
    )


def _claim_dir(config: SynthConfig) -> Path:
    """Write the config beside the manifest, refusing a folder made with a different one."""
    path = config.out / CONFIG_NAME
    content = config.content()
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        old_content = {k: v for k, v in (old or {}).items() if k not in ("n_items", "workers")}
        if old_content != content:
            diff = sorted(k for k in set(old_content) | set(content) if old_content.get(k) != content.get(k))
            raise SynthError(
                f"{config.out} holds a corpus made with a different config (differs in {', '.join(diff)}); "
                f"use another --out, or delete the folder to rebuild it")
    config.out.mkdir(parents=True, exist_ok=True)
    row = {**content, "n_items": config.n_items, "workers": config.workers}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


# --- per-process worker state: one renderer per soundfont, made on first use ---
_CONFIG: SynthConfig | None = None
_RENDERERS: dict[tuple[Path, int], Renderer] = {}


def _init_worker(config: SynthConfig) -> None:
    global _CONFIG
    _CONFIG = config


def _renderer(soundfont: Path) -> Renderer:
    key = (soundfont, _CONFIG.sample_rate)
    if key not in _RENDERERS:
        _RENDERERS[key] = Renderer(soundfont, _CONFIG.sample_rate)
    return _RENDERERS[key]


def _make_item(index: int) -> dict:
    """Compose item `index`, render what is missing; errors come back as data, not exceptions."""
    cfg = _CONFIG
    iid = item_id(index)
    audio = Path("audio") / f"{iid}.wav"
    result = {"index": index, "id": iid, "audio": str(audio), "heldout_audio": None, "tags": {},
              "split": None, "rendered": False, "error": None}
    try:
        import soundfile as sf

        split = split_of(cfg.seed, index, cfg.splits)
        rng = np.random.default_rng([cfg.seed, index])
        spec = draw_spec(rng)
        pm = compose(spec, int(rng.integers(2**63)), cfg.seconds)
        result.update(split=split, tags=song_tags(spec, pm))
        wav, mid = cfg.out / audio, cfg.out / audio.with_suffix(".mid")
        todo = [(wav, cfg.soundfont)]
        if split == "test" and cfg.heldout_soundfont is not None:
            held = Path("audio_heldout_sf") / f"{iid}.wav"
            result["heldout_audio"] = str(held)
            todo.append((cfg.out / held, cfg.heldout_soundfont))
        if not mid.exists():
            mid.parent.mkdir(parents=True, exist_ok=True)
            pm.write(str(mid.with_suffix(".mid.tmp")))
            os.replace(mid.with_suffix(".mid.tmp"), mid)
        for path, soundfont in todo:
            if path.exists():
                continue
            x = _renderer(soundfont).render(pm, cfg.seconds)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".wav.tmp")
            sf.write(tmp, x, cfg.sample_rate, subtype="PCM_16", format="WAV")
            os.replace(tmp, path)
            result["rendered"] = True
    except Exception as exc:  # one bad item must not lose the others' work
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result
