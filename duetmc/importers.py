"""Importers: public music-text datasets (docs/DESIGN.md §3) and plain JSONL into our manifest.

Each importer reads the published file with its real column names and returns the items plus an
`ImportReport`. Free tags are sorted into categories by the vocabulary (unknown ones go under `other`).
A bad row is skipped and listed in the report, never fatal; audio files that are not found are listed
once, with a count, and their items are left out unless `keep_missing` is set.

Audio paths are written absolute, or relative to the *manifest's* folder when the audio lies inside
it, which is how the manifest loader reads them, whatever the working directory (the audio root is
resolved first). Accepted audio file names (`<ext>` is one of wav, flac, mp3, ogg, opus; files are
found anywhere under the audio root by name):

Conventions:
  musiccaps      id = ytid; the clip is start_s..end_s of the file `<ytid>.<ext>` under the audio root
                 (pass clip_files=True when the files already hold only the 10 s clip). Clip files
                 named `<ytid>_<start>_<end>.<ext>` or `<ytid>-<start>-<end>.<ext>` (seconds, e.g.
                 `-0Gj8-vB1q4_30_40.wav`) are found too. Split: the given one, else "test" for
                 is_audioset_eval rows and "train" for the rest.
  song-describer one item per track with all its captions. By default only captions of the valid
                 subset are kept (valid_only), and tracks go to split "test" unless a split is given
                 (the dataset is meant for evaluation). MTG-Jamendo tags come from the `genre`,
                 `instrument` and `mood/theme` columns and, when present, song_describer.mtg-jamendo.tsv.
                 Audio: the CSV's `path` (`xx/<track>.mp3`) or its 2-minute version `xx/<track>.2min.mp3`,
                 under the root or under `audio/`, or any `<track_id>.2min.<ext>` / `<track_id>.<ext>`.
  lp-musiccaps   LP-MusicCaps-MTT (JSON list, JSON object, JSONL or CSV): MagnaTagATune tags and the four
                 caption kinds (writing, summary, paraphrase, attribute_prediction), split from `split`.
                 Audio: the record's `path` (MagnaTagATune's `x/<name>.mp3`), or `<stem of path>.<ext>`,
                 or `<track_id>.<ext>`.
  yt8m-mtc       YT8M-MusicTextClips (`train.csv`, `test.csv`): one row per caption with `video_id`, the
                 caption in `text` (or `caption`) and, when present, the clip's `start`/`end` seconds;
                 rows of the same clip are one item with several captions (id `<video_id>_<start>_<end>`,
                 or `<video_id>` without times). Assumption (the public repository that reads the
                 set names only `video_id` and `text`): `start`/`end` may be absent, and then the file
                 holds the clip itself. Audio: `<video_id>_<start>_<end>.<ext>` (clip file, no
                 start/end written) or `<video_id>.<ext>` (whole video, start/end written). Split: the
                 given one, else "train"/"test" from the file name (train.csv, test.csv).
  jsonl          one JSON object per line with `audio` (relative to the audio root) and optional `id`,
                 `tags` (list or category -> list), `caption`/`captions`, `captions_i18n`, `start`, `end`,
                 `split`.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from duetmc.augment.vocab import Vocabulary, default_vocabulary, warn_unknown
from duetmc.manifest import SPLITS, Item, ManifestError, parse_row, write_manifest
from duetmc.errors import DuetmcError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
LP_CAPTION_KINDS = ("caption_writing", "caption_summary", "caption_paraphrase", "caption_attribute_prediction")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "eval": "test"}
_MTG_PREFIX = re.compile(r"^(genre|instrument|mood/theme|mood)---", re.IGNORECASE)


class DatasetError(DuetmcError, ValueError):
    """The source file cannot be read as the named dataset; the message says what was expected."""


@dataclass
class ImportReport:
    dataset: str
    source: str
    rows: int = 0
    items: int = 0
    captions: int = 0
    missing_audio: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: what was wrong" for skipped or partial rows
    unknown_tags: int = 0
    out: str | None = None

    def to_json(self) -> dict:
        return {**self.__dict__, "missing_audio_count": len(self.missing_audio)}


@dataclass(frozen=True)
class ImportOptions:
    audio_root: Path
    split: str | None = None
    keep_missing: bool = False
    vocab: Vocabulary | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise DatasetError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        # absolute, so the manifest writer can store paths that read back from the manifest's folder
        object.__setattr__(self, "audio_root", Path(self.audio_root).expanduser().resolve())


class _AudioIndex:
    """Finds audio files under the root by relative path or by file stem (one directory walk)."""

    def __init__(self, root: Path):
        self.root = root
        self._by_stem: dict[str, Path] | None = None

    def find(self, relative: Iterable[str] = (), stems: Iterable[str] = ()) -> Path | None:
        for rel in relative:
            path = self.root / rel
            if path.is_file():
                return path
        if self._by_stem is None:
            self._by_stem = {}
            if self.root.is_dir():
                for path in sorted(self.root.rglob("*")):
                    if path.suffix.lower() in AUDIO_EXTENSIONS:
                        self._by_stem.setdefault(path.stem, path)
        for stem in stems:
            if stem in self._by_stem:
                return self._by_stem[stem]
        return None


def _bool(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "t")


def _tag_list(value: object) -> list[str]:
    """Tags from a list, a Python/JSON list string ("['rock', 'pop']") or a comma-separated string."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value or "").strip()
    if not text:
        return []
    if text.startswith("["):
        parsed = ast.literal_eval(text)  # ValueError/SyntaxError reach the caller, who names the row
        if not isinstance(parsed, list):
            raise ValueError(f"expected a list, got {type(parsed).__name__}")
        return [str(v).strip() for v in parsed if str(v).strip()]
    return [t.strip() for t in re.split(r"[,;|]", text) if t.strip()]


def _read_csv(src: Path, required: Sequence[str]) -> list[tuple[int, dict]]:
    with src.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{src}: missing column(s) {missing}; found {reader.fieldnames}. Is this the right file for this importer?")
        return [(reader.line_num, row) for row in reader]


def _finish(items: list[tuple[Item, bool]], report: ImportReport, options: ImportOptions, unknown: list[str]) -> list[Item]:
    """Apply the missing-audio policy once, and warn once about missing files and unknown tags."""
    report.missing_audio = [str(item.audio) for item, found in items if not found]
    kept = [item for item, found in items if found or options.keep_missing]
    report.items = len(kept)
    report.captions = sum(len(i.captions) for i in kept)
    report.unknown_tags = len(unknown)
    if report.missing_audio:
        n = len(report.missing_audio)
        action = "kept in the manifest (--keep-missing)" if options.keep_missing else "left out of the manifest"
        hint = f"; check --audio-root {options.audio_root}" if n == len(items) else ""
        warnings.warn(f"{report.source}: {n} of {len(items)} audio file(s) not found, {action}, e.g. {report.missing_audio[0]}{hint}", UserWarning, stacklevel=3)
    warn_unknown(unknown, report.source)
    return kept


def import_musiccaps(src: Path, options: ImportOptions, clip_files: bool = False) -> tuple[list[Item], ImportReport]:
    src = Path(src)
    vocab = options.vocab or default_vocabulary()
    report = ImportReport("musiccaps", str(src))
    rows = _read_csv(src, ("ytid", "start_s", "end_s", "aspect_list", "caption"))
    report.rows = len(rows)
    index = _AudioIndex(options.audio_root)
    out: list[tuple[Item, bool]] = []
    unknown: list[str] = []
    seen: set[str] = set()
    for line, row in rows:
        where = f"{src}:{line}"
        ytid = (row.get("ytid") or "").strip()
        if not ytid or ytid in seen:
            report.problems.append(f"{where}: {'empty' if not ytid else 'duplicate'} ytid {ytid!r}; row skipped")
            continue
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
            if end <= start:
                raise ValueError(f"end_s ({end}) must be after start_s ({start})")
        except (TypeError, ValueError) as exc:
            report.problems.append(f"{where}: bad clip times ({exc}); row skipped")
            continue
        try:
            aspects = _tag_list(row["aspect_list"])
        except (ValueError, SyntaxError) as exc:
            report.problems.append(f"{where}: aspect_list is not a list ({exc}); imported without tags")
            aspects = []
        tags = vocab.categorise(aspects)
        unknown += tags.unknown
        path = index.find([f"{ytid}{e}" for e in AUDIO_EXTENSIONS], [ytid, f"{ytid}_{start:g}_{end:g}", f"{ytid}-{start:g}-{end:g}"])
        split = options.split or ("test" if _bool(row.get("is_audioset_eval")) else "train")
        caption = (row.get("caption") or "").strip()
        item = Item(id=ytid, audio=path or options.audio_root / f"{ytid}.wav", tags=tags.tags, captions=[caption] if caption else [],
                    start=None if clip_files else start, end=None if clip_files else end, split=split)
        seen.add(ytid)
        out.append((item, path is not None))
    return _finish(out, report, options, unknown), report


def _jamendo_tsv_tags(path: Path) -> dict[str, list[str]]:
    """track id (digits) -> prefixed MTG-Jamendo tags from a TRACK_ID..TAGS tsv."""
    tags: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 5 or cols[0].upper() == "TRACK_ID":
                continue
            tags[cols[0].split("_")[-1].lstrip("0") or "0"] = [c for c in cols[5:] if c.strip()]
    return tags


def import_song_describer(src: Path, options: ImportOptions, valid_only: bool = True, jamendo_tsv: Path | None = None) -> tuple[list[Item], ImportReport]:
    src = Path(src)
    vocab = options.vocab or default_vocabulary()
    report = ImportReport("song-describer", str(src))
    rows = _read_csv(src, ("caption_id", "track_id", "caption", "is_valid_subset", "path"))
    report.rows = len(rows)
    tsv = Path(jamendo_tsv) if jamendo_tsv else src.with_name("song_describer.mtg-jamendo.tsv")
    tsv_tags = _jamendo_tsv_tags(tsv) if tsv.is_file() else {}
    if jamendo_tsv and not tsv.is_file():
        raise DatasetError(f"{tsv}: MTG-Jamendo tsv not found")
    tracks: dict[str, dict] = {}
    for line, row in rows:
        where = f"{src}:{line}"
        track = (row.get("track_id") or "").strip()
        caption = (row.get("caption") or "").strip()
        if not track:
            report.problems.append(f"{where}: empty track_id; row skipped")
            continue
        if valid_only and not _bool(row.get("is_valid_subset")):
            continue
        entry = tracks.setdefault(track, {"path": (row.get("path") or "").strip(), "captions": [], "tags": {}, "valid": False})
        entry["valid"] |= _bool(row.get("is_valid_subset"))
        if caption and caption not in entry["captions"]:
            entry["captions"].append(caption)
        for category, columns in (("genre", ("genre",)), ("instrument", ("instrument",)), ("mood", ("mood/theme", "mood", "mood_theme"))):
            for column in columns:
                try:
                    values = _tag_list(row.get(column))
                except (ValueError, SyntaxError) as exc:
                    report.problems.append(f"{where}: column {column!r} is not a tag list ({exc}); ignored")
                    continue
                for tag in values:
                    entry["tags"].setdefault(category, []).append(_MTG_PREFIX.sub("", tag))
    index = _AudioIndex(options.audio_root)
    out: list[tuple[Item, bool]] = []
    unknown: list[str] = []
    for track, entry in tracks.items():
        for tag in tsv_tags.get(track.lstrip("0") or "0", []):
            prefix = tag.split("---")[0].lower()
            category = {"genre": "genre", "instrument": "instrument", "mood/theme": "mood"}.get(prefix)
            if category:
                entry["tags"].setdefault(category, []).append(tag.split("---", 1)[1])
        tags = vocab.categorise(entry["tags"])
        unknown += tags.unknown
        rel = entry["path"]
        two_min = re.sub(r"\.mp3$", ".2min.mp3", rel)
        path = index.find([two_min, rel, f"audio/{two_min}", f"audio/{rel}"], [f"{track}.2min", track])
        split = options.split or ("test" if entry["valid"] else None)
        item = Item(id=track, audio=path or options.audio_root / (two_min or f"{track}.2min.mp3"), tags=tags.tags,
                    captions=entry["captions"], split=split)
        out.append((item, path is not None))
    return _finish(out, report, options, unknown), report


def _read_records(src: Path, jsonl: bool = False) -> list[tuple[str, dict]]:
    """(where, record) from a JSON list, a JSON object of records, JSONL (by suffix or `jsonl`) or CSV."""
    if src.suffix.lower() == ".csv":
        return [(f"{src}:{line}", row) for line, row in _read_csv(src, ("track_id",))]
    text = src.read_text(encoding="utf-8")
    if jsonl or src.suffix.lower() == ".jsonl":
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((f"{src}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    out.append((f"{src}:{lineno}", {"__error__": f"not valid JSON ({exc.msg})"}))
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{src}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a list of records, or JSONL") from None
    if isinstance(data, dict):
        data = [{"track_id": k, **v} if isinstance(v, dict) else v for k, v in data.items()]
    if not isinstance(data, list):
        raise DatasetError(f"{src}: expected a list of records")
    return [(f"{src}: record {i}", rec) for i, rec in enumerate(data)]


def _objects(records: list[tuple[str, object]], report: ImportReport):
    """The records that are JSON objects; the others are listed in the report and skipped."""
    for where, rec in records:
        if not isinstance(rec, dict) or "__error__" in rec:
            report.problems.append(f"{where}: {rec.get('__error__') if isinstance(rec, dict) else 'not an object'}; skipped")
            continue
        yield where, rec


def import_lp_musiccaps(src: Path, options: ImportOptions) -> tuple[list[Item], ImportReport]:
    src = Path(src)
    vocab = options.vocab or default_vocabulary()
    report = ImportReport("lp-musiccaps", str(src))
    records = _read_records(src)
    report.rows = len(records)
    index = _AudioIndex(options.audio_root)
    out: list[tuple[Item, bool]] = []
    unknown: list[str] = []
    seen: set[str] = set()
    for where, rec in _objects(records, report):
        track = str(rec.get("track_id", "")).strip()
        if not track or track in seen:
            report.problems.append(f"{where}: {'missing' if not track else 'duplicate'} track_id {track!r}; skipped")
            continue
        try:
            raw_tags = _tag_list(rec.get("tag"))
        except (ValueError, SyntaxError) as exc:
            report.problems.append(f"{where}: 'tag' is not a list ({exc}); imported without tags")
            raw_tags = []
        tags = vocab.categorise(raw_tags)
        unknown += tags.unknown
        captions = list(dict.fromkeys(str(rec[k]).strip() for k in LP_CAPTION_KINDS if rec.get(k) and str(rec[k]).strip()))
        raw_split = str(rec.get("split") or "").strip().lower()
        split = options.split or _SPLIT_ALIASES.get(raw_split)
        if raw_split and split is None:
            report.problems.append(f"{where}: unknown split {raw_split!r}; imported without a split")
        rel = str(rec.get("path") or "").strip()
        path = index.find([rel] if rel else [], [Path(rel).stem if rel else track, track])
        item = Item(id=track, audio=path or options.audio_root / (rel or f"{track}.mp3"), tags=tags.tags, captions=captions, split=split)
        seen.add(track)
        out.append((item, path is not None))
    return _finish(out, report, options, unknown), report


def import_jsonl(src: Path, options: ImportOptions) -> tuple[list[Item], ImportReport]:
    src = Path(src)
    vocab = options.vocab or default_vocabulary()
    report = ImportReport("jsonl", str(src))
    records = _read_records(src, jsonl=src.suffix.lower() != ".json")
    report.rows = len(records)
    out: list[tuple[Item, bool]] = []
    unknown: list[str] = []
    seen: set[str] = set()
    for where, rec in _objects(records, report):
        row = dict(rec)
        caption = row.pop("caption", None)
        if caption is not None:
            row["captions"] = [caption, *row.get("captions", [])] if isinstance(caption, str) else caption
        if isinstance(row.get("audio"), str) and "id" not in row:
            row["id"] = Path(row["audio"]).stem
        if isinstance(row.get("tags"), (list, dict)):
            try:
                tags = vocab.categorise(row["tags"])
            except (AttributeError, TypeError):
                tags = None  # not strings: let parse_row name the problem
            if tags is not None:
                row["tags"] = tags.tags
                unknown += tags.unknown
        if options.split and "split" not in row:
            row["split"] = options.split
        try:
            item = parse_row(row, where, options.audio_root)
        except ManifestError as exc:
            report.problems.append(f"{exc}; skipped")
            continue
        if item.id in seen:
            report.problems.append(f"{where}: duplicate id {item.id!r}; skipped")
            continue
        seen.add(item.id)
        out.append((item, item.audio.is_file()))
    return _finish(out, report, options, unknown), report


def _seconds(value: object) -> float | None:
    text = str(value if value is not None else "").strip()
    return float(text) if text else None


def _yt8m_clip(row: dict) -> tuple[str, float | None, float | None]:
    """(clip id, start, end) of a YT8M-MusicTextClips row; ValueError names what is wrong."""
    video = (row.get("video_id") or "").strip()
    if not video:
        raise ValueError("empty video_id")
    start, end = _seconds(row.get("start")), _seconds(row.get("end"))
    if (start is None) != (end is None) or (start is not None and end <= start):
        raise ValueError(f"start/end must both be given with end after start, got {row.get('start')!r}, {row.get('end')!r}")
    return (video if start is None else f"{video}_{start:g}_{end:g}"), start, end


def import_yt8m_mtc(src: Path, options: ImportOptions) -> tuple[list[Item], ImportReport]:
    src = Path(src)
    report = ImportReport("yt8m-mtc", str(src))
    with src.open(newline="", encoding="utf-8") as fh:
        columns = csv.DictReader(fh).fieldnames or []
    caption_col = "text" if "text" in columns else "caption"
    rows = _read_csv(src, ("video_id", caption_col))
    report.rows = len(rows)
    split = options.split or {"train": "train", "test": "test"}.get(src.stem.lower())
    clips: dict[str, dict] = {}
    for line, row in rows:
        try:
            clip, start, end = _yt8m_clip(row)
        except ValueError as exc:
            report.problems.append(f"{src}:{line}: {exc}; row skipped")
            continue
        entry = clips.setdefault(clip, {"video": row["video_id"].strip(), "start": start, "end": end, "captions": []})
        caption = (row.get(caption_col) or "").strip()
        if caption and caption not in entry["captions"]:
            entry["captions"].append(caption)
    index = _AudioIndex(options.audio_root)
    out: list[tuple[Item, bool]] = []
    for clip, e in clips.items():
        clip_file = index.find([], [clip]) if e["start"] is not None else None
        path = clip_file or index.find([f"{e['video']}{x}" for x in AUDIO_EXTENSIONS], [e["video"]])
        whole = clip_file is None and e["start"] is not None
        item = Item(id=clip, audio=path or options.audio_root / f"{clip}.wav", captions=e["captions"],
                    start=e["start"] if whole else None, end=e["end"] if whole else None, split=split)
        out.append((item, path is not None))
    return _finish(out, report, options, []), report


IMPORTERS: dict[str, Callable[..., tuple[list[Item], ImportReport]]] = {
    "musiccaps": import_musiccaps,
    "song-describer": import_song_describer,
    "lp-musiccaps": import_lp_musiccaps,
    "jsonl": import_jsonl,
    "yt8m-mtc": import_yt8m_mtc,
}


def import_dataset(kind: str, src: str | Path, options: ImportOptions, out: str | Path, **extra) -> ImportReport:
    """Run the named importer and write the manifest; `extra` holds importer-specific options."""
    if kind not in IMPORTERS:
        raise DatasetError(f"unknown dataset {kind!r}; choose one of {sorted(IMPORTERS)}")
    src = Path(src)
    if not src.is_file():
        raise DatasetError(f"{src}: source file not found")
    items, report = IMPORTERS[kind](src, options, **extra)
    if not items:
        raise DatasetError(f"{src}: no items to write ({report.rows} rows, {len(report.missing_audio)} with missing audio, "
                           f"{len(report.problems)} problems: {report.problems[:3]}); nothing written to {out}")
    report.out = str(write_manifest(items, out))
    return report
