"""The manifest: the JSONL file users write, one audio item per line.

Every row is validated on load; an error names the file, the line, the field and what to do.
"""

from __future__ import annotations

import json
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from duetmc.errors import DuetmcError

SPLITS = ("train", "val", "test")
_FIELDS = {"id", "audio", "start", "end", "tags", "captions", "captions_i18n", "split", "true_tags"}


class ManifestError(DuetmcError, ValueError):
    """A manifest row is malformed. The message names file, line and field."""


@dataclass(frozen=True)
class Item:
    id: str
    audio: Path
    tags: dict[str, list[str]] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    captions_i18n: dict[str, list[str]] = field(default_factory=dict)
    start: float | None = None
    end: float | None = None
    split: str | None = None
    # the complete, correct tags where `tags` are partial or noisy (synthetic benchmarks); never trained on
    true_tags: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict:
        audio = self.audio
        if relative_to is not None:
            # An in-memory path is relative to the working directory; the file stores it relative to
            # its own folder (or absolute when outside it), which is how load_manifest reads it.
            audio = Path(os.path.abspath(audio))
            try:
                audio = audio.relative_to(relative_to)
            except ValueError:
                pass
        row: dict = {"id": self.id, "audio": str(audio)}
        if self.start is not None:
            row["start"] = self.start
        if self.end is not None:
            row["end"] = self.end
        row["tags"] = self.tags
        row["captions"] = self.captions
        if self.captions_i18n:
            row["captions_i18n"] = self.captions_i18n
        if self.split is not None:
            row["split"] = self.split
        if self.true_tags:
            row["true_tags"] = self.true_tags
        return row


def jsonl_lines(path: Path, error: type[DuetmcError]) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a UTF-8 JSONL file; `error` names a line that is not UTF-8."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{path}:{lineno}: not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                            "save the file as UTF-8") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            if line.strip():
                yield lineno, line


def _str_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where}: expected a list of strings, got {json.dumps(value)[:80]}")
    return [v.strip() for v in value if v.strip()]


def _str_list_dict(value, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected an object mapping names to lists of strings, got {json.dumps(value)[:80]}")
    return {str(k): _str_list(v, f"{where}.{k}") for k, v in value.items()}


def parse_row(row: object, where: str, base: Path) -> Item:
    """Validate one decoded JSON row. `where` is 'file:line' for messages."""
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
    unknown = set(row) - _FIELDS
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}; allowed are {sorted(_FIELDS)}")
    for name in ("id", "audio"):
        if name not in row:
            raise ManifestError(f"{where}: field '{name}' is required")
        if not isinstance(row[name], str) or not row[name].strip():
            raise ManifestError(f"{where}: field '{name}' must be a non-empty string, got {json.dumps(row[name])[:80]}")
    start, end = row.get("start"), row.get("end")
    for name, v in (("start", start), ("end", end)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise ManifestError(f"{where}: field '{name}' must be a finite non-negative number of seconds, "
                                f"got {json.dumps(v)}")
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: 'end' ({end}) must be greater than 'start' ({start})")
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise ManifestError(f"{where}: field 'split' must be one of {list(SPLITS)}, got {json.dumps(split)}")
    audio = Path(row["audio"]).expanduser()
    if not audio.is_absolute():
        audio = base / audio
    return Item(
        id=row["id"].strip(),
        audio=audio,
        tags=_str_list_dict(row.get("tags", {}), f"{where}: field 'tags'"),
        captions=_str_list(row.get("captions", []), f"{where}: field 'captions'"),
        captions_i18n=_str_list_dict(row.get("captions_i18n", {}), f"{where}: field 'captions_i18n'"),
        start=None if start is None else float(start),
        end=None if end is None else float(end),
        split=split,
        true_tags=_str_list_dict(row.get("true_tags", {}), f"{where}: field 'true_tags'"),
    )


def load_manifest(path: str | Path) -> list[Item]:
    """Load and validate a manifest; audio paths resolve against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found" + (" (it is a directory)" if path.is_dir() else ""))
    base = path.resolve().parent
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in jsonl_lines(path, ManifestError):
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line") from None
        item = parse_row(row, where, base)
        if item.id in seen:
            raise ManifestError(f"{where}: field 'id': duplicate id {item.id!r}, first seen on line {seen[item.id]}; ids must be unique")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise ManifestError(f"{path}: manifest has no items")
    return items


def write_manifest(items: Iterable[Item], path: str | Path) -> Path:
    """Write items as JSONL; audio paths inside the manifest's folder are stored relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.to_json(relative_to=base), ensure_ascii=False) + "\n")
    return path
