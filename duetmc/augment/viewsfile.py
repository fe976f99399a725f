"""The views file: every text the trainer may see, one JSON record per line.

Written by `duetmc augment`, read by `duetmc featurize text`. Kinds:
  tags     the tags-only text of an item ("rock, happy, electric guitar")
  caption  a human caption from the manifest, or the tag-to-caption caption of all tags (view=None)
  view     an Augmented View Dropout caption (view = 0..K-1)
  swap     a TextSwap hard negative of a tags/caption/view text (parent = that text)
  label    one tag on its own (item = ""), the query of zero-shot tag retrieval
  probe_swap     a TextSwap variant of a test item's tags text or human caption (evaluation only)
  probe_partial  a test item's query built from one tag category (category = it; evaluation only)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable
from duetmc.errors import DuetmcError
from duetmc.manifest import jsonl_lines

KINDS = ("tags", "caption", "view", "swap", "label", "probe_swap", "probe_partial")
# Who wrote a caption (a record's `source`). Human captions come from the manifest or the imported
# dataset; a translation of a human caption counts as human in its language (the paper's Table 3
# queries are translated captions). Generated captions are training data only.
HUMAN_SOURCES = frozenset({"human", "translation"})
GENERATED_SOURCES = frozenset({"template", "llm", "hf", "fallback"})


class ViewsFileError(DuetmcError, ValueError):
    """A views-file record is malformed; the message names file and line."""


@dataclass(frozen=True)
class TextRecord:
    item: str
    kind: str
    text: str
    lang: str = "en"
    view: int | None = None
    # swaps: the text this one was made from, the category swapped and the words from -> to
    parent: str | None = None
    category: str | None = None
    swapped_from: list[str] = field(default_factory=list)
    swapped_to: list[str] = field(default_factory=list)
    # who wrote it: human, template, llm, hf, fallback (an llm failure replaced by the template), swap
    source: str = "human"
    # the tags this text was built from (views), or why a swap was skipped
    tags: list[str] = field(default_factory=list)
    note: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


def write_views(records: Iterable[TextRecord], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
    return path


# field -> (accepted types, what to say); a missing optional field takes the dataclass default
_TYPES = {
    "item": ((str,), "a string"), "kind": ((str,), "a string"), "text": ((str,), "a non-empty string"),
    "lang": ((str,), "a language code string such as \"en\""), "view": ((int, type(None)), "an integer or null"),
    "parent": ((str, type(None)), "a string or null"), "category": ((str, type(None)), "a string or null"),
    "swapped_from": ((list,), "a list of strings"), "swapped_to": ((list,), "a list of strings"),
    "source": ((str,), "a string"), "tags": ((list,), "a list of strings"), "note": ((str, type(None)), "a string or null"),
}


def parse_record(row: object, where: str) -> TextRecord:
    """Validate one decoded views record; the message names `where` (file:line) and the field."""
    if not isinstance(row, dict) or not {"item", "kind", "text"} <= set(row):
        raise ViewsFileError(f"{where}: each record needs 'item', 'kind' and 'text'")
    extra = set(row) - set(_TYPES)
    if extra:
        raise ViewsFileError(f"{where}: unknown field(s) {sorted(extra)}")
    for name, value in row.items():
        types, what = _TYPES[name]
        bad = not isinstance(value, types) or isinstance(value, bool)
        bad = bad or (isinstance(value, list) and not all(isinstance(v, str) for v in value))
        if bad or (name == "text" and not value.strip()):
            raise ViewsFileError(f"{where}: field '{name}' must be {what}, got {json.dumps(value)[:60]}; "
                                 "fix the line or regenerate the file with `duetmc augment`")
    if row["kind"] not in KINDS:
        raise ViewsFileError(f"{where}: field 'kind' must be one of {list(KINDS)}, got {row['kind']!r}")
    return TextRecord(**row)


def read_views(path: str | Path) -> list[TextRecord]:
    path = Path(path)
    out: list[TextRecord] = []
    for lineno, line in jsonl_lines(path, ViewsFileError):
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ViewsFileError(f"{where}: not valid JSON ({exc.msg}); regenerate with `duetmc augment`") from None
        out.append(parse_record(row, where))
    if not out:
        raise ViewsFileError(f"{path}: the views file has no records; regenerate it with `duetmc augment`")
    return out


def is_views_file(path: str | Path) -> bool:
    """True when the first record looks like a views record rather than a manifest row."""
    for _, line in jsonl_lines(Path(path), ViewsFileError):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return False  # not a views file; the manifest loader names the bad line
        return isinstance(row, dict) and "kind" in row and "audio" not in row
    return False
