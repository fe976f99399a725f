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
`test_items` adds test-only clips (ids synth-test-NNNNNN) from a separate stream, so the test split
can grow without changing the training clips.

Presets: `quickstart` is the plain corpus (every tag true and complete, no captions). `bench` turns on
`HardConfig`: incomplete and noisy training tags (noise.py), near-duplicate pairs (variants.py,
listed in near_duplicates.jsonl) and human-style captions on val and test clips (describe.py). Its
manifests keep the observed tags in `tags` and the truth in `true_tags`; val and test tags are true.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from duetmc.manifest import SPLITS, Item, write_manifest
from duetmc.synth.compose import compose, draw_spec, song_tags
from duetmc.synth.describe import human_captions
from duetmc.synth.noise import TagNoise, observe_tags
from duetmc.synth.variants import VARIANT_KINDS, variant_spec
from duetmc.synth.render import FLUIDR3_GM, TIMGM6MB, Renderer, check_soundfont
from duetmc.errors import DuetmcError, machine_error
from duetmc.atomic import atomic_write, atomic_write_text

# bump when a change to composing or rendering makes old files stale; reruns then refuse the old dir
GENERATOR_VERSION = 1
SPLIT_BLOCK = 10  # splits are dealt out exactly within each block of 10 consecutive items
HELDOUT_SUFFIX = "-heldout-sf"
CONFIG_NAME = "synth_config.json"
MANIFEST_NAME = "manifest.jsonl"
HELDOUT_MANIFEST_NAME = "manifest_heldout_sf.jsonl"
PAIRS_NAME = "near_duplicates.jsonl"
TEST_STREAM = "test"  # the stream of test-only items added by `test_items`


GROWABLE = ("n_items", "test_items", "workers")  # config fields a rerun may change


class SynthError(DuetmcError, ValueError):
    """A bad synth config, or an output folder made with a different one."""


@dataclass(frozen=True)
class HardConfig:
    """What makes the bench corpus hard in the ways real data is; defaults and reasons in the README."""

    noise: TagNoise = TagNoise()
    p_near_duplicate: float = 0.5  # chance that item 2k+1 is a one-attribute variant of item 2k
    variant_kinds: tuple[str, ...] = VARIANT_KINDS
    eval_captions: int = 2  # human-style captions per val and test clip
    caption_instruments: int = 2  # at most this many instruments named per caption

    @staticmethod
    def from_json(d: dict) -> "HardConfig":
        d = dict(d)
        d["noise"] = TagNoise(**d.get("noise", {}))
        d["variant_kinds"] = tuple(d.get("variant_kinds", VARIANT_KINDS))
        return HardConfig(**d)

    def check(self) -> None:
        rates = {"p_near_duplicate": self.p_near_duplicate, **{f"noise.{k}": v for k, v in asdict(self.noise).items()}}
        for name, v in rates.items():
            if not 0.0 <= v <= 1.0:
                raise SynthError(f"{name} must be a probability in [0, 1], got {v}")
        unknown = set(self.variant_kinds) - set(VARIANT_KINDS)
        if unknown or not self.variant_kinds:
            raise SynthError(f"variant_kinds must be a non-empty subset of {list(VARIANT_KINDS)}, got {list(self.variant_kinds)}")
        if self.eval_captions < 1 or self.caption_instruments < 1:
            raise SynthError("eval_captions and caption_instruments must be at least 1")


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
    test_items: int = 0  # extra test-only clips, beyond the test share of n_items
    hard: HardConfig | None = None  # None: every tag true and complete (the quickstart corpus)

    def __post_init__(self):
        self.out = Path(self.out)
        self.soundfont = Path(self.soundfont)
        self.heldout_soundfont = None if self.heldout_soundfont is None else Path(self.heldout_soundfont)
        self.splits = tuple(float(f) for f in self.splits)
        if isinstance(self.hard, dict):
            self.hard = HardConfig.from_json(self.hard)
        if self.hard is not None:
            self.hard.check()
        if self.test_items < 0:
            raise SynthError(f"test_items must be at least 0, got {self.test_items}")
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
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in GROWABLE + ("out", "hard")}
        d["soundfont"] = str(self.soundfont)
        d["heldout_soundfont"] = None if self.heldout_soundfont is None else str(self.heldout_soundfont)
        d["splits"] = list(self.splits)
        d["generator_version"] = GENERATOR_VERSION
        if self.hard is not None:  # absent for the plain corpus, so its existing folders stay valid
            d["hard"] = json.loads(json.dumps(asdict(self.hard)))
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
    near_duplicates: int = 0  # pairs listed in near_duplicates.jsonl

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
    check_soundfont(config.soundfont)
    if config.heldout_soundfont is not None:
        check_soundfont(config.heldout_soundfont)
    out = config.out
    config_path = _claim_dir(config)
    t0 = time.perf_counter()
    tasks = [("main", i) for i in range(config.n_items)] + [(TEST_STREAM, j) for j in range(config.test_items)]
    results = _run_tasks(config, tasks, progress)
    seconds_wall = time.perf_counter() - t0
    order = {t: k for k, t in enumerate(tasks)}
    results.sort(key=lambda r: order[(r["stream"], r["index"])])

    ok = [r for r in results if r["error"] is None]
    items = [_item(r, out / r["audio"], r["id"], r["split"]) for r in ok]
    manifest = write_manifest(items, out / MANIFEST_NAME)
    heldout_manifest = None
    held = [_item(r, out / r["heldout_audio"], r["id"] + HELDOUT_SUFFIX, "test") for r in ok if r["heldout_audio"]]
    if held:
        heldout_manifest = write_manifest(held, out / HELDOUT_MANIFEST_NAME)
    elif (out / HELDOUT_MANIFEST_NAME).exists():  # a stale one from an earlier config would mislead
        (out / HELDOUT_MANIFEST_NAME).unlink()
    _write_pairs([r for r in ok if r["pair"]], out / PAIRS_NAME)
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
        near_duplicates=sum(bool(r["pair"]) for r in ok),
    )


def _run_tasks(config: SynthConfig, tasks: list[tuple[str, int]], progress: bool) -> list[dict]:
    from tqdm import tqdm

    results: list[dict] = []
    with tqdm(total=len(tasks), desc="synth", unit="clip", disable=not progress) as bar:
        if config.workers == 1:
            _init_worker(config)
            for task in tasks:
                results.append(_make_item(task))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe once threads (torch, tqdm) exist
            with ctx.Pool(config.workers, initializer=_init_worker, initargs=(config,)) as pool:
                for r in pool.imap_unordered(_make_item, tasks, chunksize=2):
                    results.append(r)
                    bar.update()
    return results


def _item(r: dict, audio: Path, iid: str, split: str) -> Item:
    extra = {"true_tags": r["true_tags"]} if r["true_tags"] is not None else {}
    return Item(id=iid, audio=audio, tags=r["tags"], captions=r["captions"], split=split, **extra)


def _write_pairs(rows: list[dict], path: Path) -> None:
    """One line per near-duplicate pair: the two ids, the attribute that differs, both values."""
    if not rows:
        if path.exists():
            path.unlink()
        return
    atomic_write_text(path, "".join(json.dumps({**r["pair"], "b": r["id"], "split": r["split"]}) + "\n"
                                    for r in rows))


def _claim_dir(config: SynthConfig) -> Path:
    """Write the config beside the manifest, refusing a folder made with a different one."""
    path = config.out / CONFIG_NAME
    content = config.content()
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        old_content = {k: v for k, v in (old or {}).items() if k not in GROWABLE}
        if old_content != content:
            diff = sorted(k for k in set(old_content) | set(content) if old_content.get(k) != content.get(k))
            raise SynthError(
                f"{config.out} holds a corpus made with a different config (differs in {', '.join(diff)}); "
                f"use another --out, or delete the folder to rebuild it")
    config.out.mkdir(parents=True, exist_ok=True)
    row = {**content, **{k: getattr(config, k) for k in GROWABLE}}
    return atomic_write_text(path, json.dumps(row, indent=2, sort_keys=True) + "\n")


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


def _stream_key(seed: int, stream: str, index: int) -> list[int]:
    return [seed, index] if stream == "main" else [seed, index, 1]


def stream_item_id(stream: str, index: int) -> str:
    return item_id(index) if stream == "main" else f"synth-{stream}-{index:06d}"


def _split(cfg: SynthConfig, stream: str, index: int) -> str:
    return split_of(cfg.seed, index, cfg.splits) if stream == "main" else "test"


def _base_song(cfg: SynthConfig, stream: str, index: int):
    """The item's own draw: its spec and the seed its notes are composed from."""
    rng = np.random.default_rng(_stream_key(cfg.seed, stream, index))
    spec = draw_spec(rng)
    return spec, int(rng.integers(2**63))


def _song(cfg: SynthConfig, stream: str, index: int):
    """(spec, song seed, pair record or None): odd items of a pair may be a variant of the even one."""
    spec, song_seed = _base_song(cfg, stream, index)
    hard = cfg.hard
    if hard is None or index % 2 == 0 or _split(cfg, stream, index - 1) != _split(cfg, stream, index):
        return spec, song_seed, None
    rng = np.random.default_rng(_stream_key(cfg.seed, stream, index - 1) + [3])
    if rng.random() >= hard.p_near_duplicate:
        return spec, song_seed, None
    base_spec, base_seed = _base_song(cfg, stream, index - 1)
    v = variant_spec(base_spec, rng, hard.variant_kinds)
    if v is None:
        return spec, song_seed, None
    base_tags = song_tags(base_spec, compose(base_spec, base_seed, cfg.seconds))
    pair = {"a": stream_item_id(stream, index - 1), "attribute": v.attribute, "before": v.before, "after": v.after,
            "_base_tags": base_tags}
    return v.spec, base_seed, pair


def differing_categories(a: dict, b: dict) -> set[str]:
    """Tag categories whose values differ; a BPM counts with its tempo."""
    diff = {c for c in set(a) | set(b) if sorted(a.get(c, [])) != sorted(b.get(c, []))}
    return {"tempo" if c == "bpm" else c for c in diff}


def _labels(cfg: SynthConfig, stream: str, index: int, split: str, true: dict) -> tuple[dict, list[str]]:
    """Observed tags and captions: noisy tags for training clips, truth and human captions otherwise."""
    if cfg.hard is None:
        return true, []
    key = _stream_key(cfg.seed, stream, index)
    if split == "train":
        return observe_tags(true, cfg.hard.noise, np.random.default_rng(key + [2])), []
    return true, human_captions(true, np.random.default_rng(key + [4]), cfg.hard.eval_captions,
                                cfg.hard.caption_instruments)


def plan_item(cfg: SynthConfig, stream: str, index: int) -> tuple[dict, object]:
    """Everything item `index` of `stream` is labelled with, and its song; no audio is rendered."""
    split = _split(cfg, stream, index)
    spec, song_seed, pair = _song(cfg, stream, index)
    pm = compose(spec, song_seed, cfg.seconds)
    true = song_tags(spec, pm)
    tags, captions = _labels(cfg, stream, index, split, true)
    if pair is not None and differing_categories(pair.pop("_base_tags"), true) != {pair["attribute"]}:
        pair = None  # e.g. a part fell silent: a clip, but not a clean one-attribute pair
    labels = {"id": stream_item_id(stream, index), "split": split, "tags": tags, "captions": captions,
              "pair": pair, "true_tags": true if cfg.hard is not None else None}
    return labels, pm


def _make_item(task: tuple[str, int]) -> dict:
    """Compose item `index` of `stream`, render what is missing; errors come back as data, not exceptions."""
    cfg = _CONFIG
    stream, index = task
    iid = stream_item_id(stream, index)
    audio = Path("audio") / f"{iid}.wav"
    result = {"stream": stream, "index": index, "id": iid, "audio": str(audio), "heldout_audio": None, "tags": {},
              "true_tags": None, "captions": [], "pair": None, "split": None, "rendered": False, "error": None}
    try:
        labels, pm = plan_item(cfg, stream, index)
        result.update(labels)
        _render(cfg, iid, labels["split"], audio, pm, result)
    except Exception as exc:  # one bad item must not lose the others' work
        if machine_error(exc):
            raise
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def _render(cfg: SynthConfig, iid: str, split: str, audio: Path, pm, result: dict) -> None:
    import soundfile as sf

    wav, mid = cfg.out / audio, cfg.out / audio.with_suffix(".mid")
    todo = [(wav, cfg.soundfont)]
    if split == "test" and cfg.heldout_soundfont is not None:
        held = Path("audio_heldout_sf") / f"{iid}.wav"
        result["heldout_audio"] = str(held)
        todo.append((cfg.out / held, cfg.heldout_soundfont))
    if not mid.exists():
        atomic_write(mid, lambda tmp: pm.write(str(tmp)))
    for path, soundfont in todo:
        if path.exists():
            continue
        x = _renderer(soundfont).render(pm, cfg.seconds)
        # encoded in memory, written by Python: libsndfile reports a full disk only as "System error."
        wav_bytes = io.BytesIO()
        sf.write(wav_bytes, x, cfg.sample_rate, subtype="PCM_16", format="WAV")
        atomic_write(path, lambda tmp: tmp.write_bytes(wav_bytes.getbuffer()))
        result["rendered"] = True
