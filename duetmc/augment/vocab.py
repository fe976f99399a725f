"""The tag vocabulary: categories, synonyms, relations and the TextSwap dictionary (docs/DESIGN.md §2).

One data file holds them all (`duetmc/resources/tags.json`; its `about` field explains the format). A
vocabulary answers four questions: which category a tag belongs to, what its canonical spelling is,
where tags are mentioned in free text (word-boundary aware, multi-word, synonyms, longest match), and
which tags a swap must never produce for it (`related`): its broader and narrower tags ("rock" and
"hard rock", "drums" and "kick drum") and near-synonyms ("calm", "relaxing"), because a caption with
those still describes the clip, and a hard negative that describes the clip is a false negative.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from duetmc.errors import DuetmcError

OTHER = "other"
_SEPARATORS = re.compile(r"[\s\-_]+")


class VocabularyError(DuetmcError, ValueError):
    """The vocabulary file is malformed; the message names the file and the entry."""


def normalise(text: str) -> str:
    """The lookup key of a tag: lower case, with spaces, hyphens and underscores alike."""
    return _SEPARATORS.sub(" ", text.strip().lower()).strip()


def _surface_pattern(key: str) -> str:
    # Words of a multi-word form may be joined by any run of spaces, hyphens or underscores in the text.
    return r"[\s\-_]+".join(re.escape(word) for word in key.split(" "))


def _compile(keys: Sequence[str]) -> re.Pattern | None:
    if not keys:
        return None
    # Longest forms first: Python's alternation takes the first alternative that matches at a position.
    alternation = "|".join(_surface_pattern(k) for k in sorted(set(keys), key=lambda k: (-len(k), k)))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class Mention:
    """A tag found in a text: the span, the words as written, the canonical tag and its category."""

    start: int
    end: int
    text: str
    tag: str
    category: str


@dataclass(frozen=True)
class Categorised:
    """An item's tags by category, canonical and de-duplicated; `unknown` lists those put under `other`."""

    tags: dict[str, list[str]]
    unknown: list[str]


class Vocabulary:
    """Tag categories with synonyms, plus the TextSwap dictionary of each swappable category."""

    def __init__(self, categories: Mapping[str, Mapping[str, Sequence[str]]], swap: Mapping[str, Sequence[str]],
                 source: str = "<memory>", relations: Mapping[str, Mapping] | None = None):
        self.source = source
        self.categories: tuple[str, ...] = tuple(categories)
        self._tags = {c: list(tags) for c, tags in categories.items()}
        self._lookup: dict[str, tuple[str, str]] = {}
        for category, tags in categories.items():
            for canonical, synonyms in tags.items():
                for form in (canonical, *synonyms):
                    key = normalise(form)
                    seen = self._lookup.get(key)
                    if seen is not None and seen != (category, canonical):
                        raise VocabularyError(
                            f"{source}: {form!r} is listed under {seen[0]}/{seen[1]!r} and under {category}/{canonical!r}; "
                            "a form may belong to one tag only, so remove one of them"
                        )
                    self._lookup[key] = (category, canonical)
        self.swap: dict[str, list[str]] = {}
        for category, words in swap.items():
            if category not in self._tags:
                raise VocabularyError(f"{source}: swap dictionary for unknown category {category!r}")
            self.swap[category] = list(dict.fromkeys(words))
        self._swap_keys = {c: [(w, normalise(w)) for w in words] for c, words in self.swap.items()}
        self._pattern = _compile(list(self._lookup))
        self._related = _relatives(categories, relations or {}, source)

    @property
    def swap_categories(self) -> tuple[str, ...]:
        return tuple(c for c in self.categories if self.swap.get(c))

    def swap_candidates(self, category: str, exclude: set[str]) -> list[str]:
        """The category's TextSwap dictionary without the words whose normalised form is in `exclude`,
        nor any tag related to one of them (broader, narrower, near-synonym)."""
        banned = set(exclude).union(*(self.related(e) for e in exclude)) if exclude else set()
        return [w for w, key in self._swap_keys.get(category, []) if key not in banned]

    def related(self, tag: str) -> set[str]:
        """Normalised canonical tags a swap of `tag` must not produce: itself, its ancestors and
        descendants (transitively) and its near-synonyms."""
        found = self.lookup(tag)
        key = normalise(found[1] if found else tag)
        return self._related.get(key, set()) | {key}

    def tags_of(self, category: str) -> list[str]:
        return list(self._tags.get(category, []))

    def lookup(self, tag: str) -> tuple[str, str] | None:
        """(category, canonical tag) of a known tag or synonym, else None."""
        return self._lookup.get(normalise(tag))

    def canonical(self, tag: str) -> str:
        """The canonical spelling of a known tag; an unknown tag comes back stripped."""
        found = self.lookup(tag)
        return found[1] if found else tag.strip()

    def categorise(self, tags: Mapping[str, Sequence[str]] | Sequence[str]) -> Categorised:
        """Sort tags into categories. A known tag goes to the vocabulary's category, in canonical spelling.

        An unknown tag stays under the key it came with when that key is one of our categories;
        otherwise it goes under `other` and is listed in `unknown`. No tag is dropped.
        """
        pairs = [(key, tag) for key, values in tags.items() for tag in values] if isinstance(tags, Mapping) else [(None, t) for t in tags]
        out: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        unknown: list[str] = []
        for key, raw in pairs:
            tag = raw.strip()
            if not tag:
                continue
            found = self.lookup(tag)
            if found:
                category, tag = found
            elif key in self._tags:
                category = key
            else:
                category = OTHER
            if (category, normalise(tag)) in seen:
                continue
            seen.add((category, normalise(tag)))
            if category == OTHER:
                unknown.append(tag)
            out.setdefault(category, []).append(tag)
        order = {c: i for i, c in enumerate((*self.categories, OTHER))}
        return Categorised({c: out[c] for c in sorted(out, key=lambda c: order.get(c, len(order)))}, unknown)

    def find_mentions(self, text: str, extra: Mapping[str, Sequence[str]] | None = None) -> list[Mention]:
        """Tags mentioned in `text`, in order, without overlaps (the longest form wins).

        `extra` maps categories to an item's own tags; those the vocabulary does not know are
        matched literally, so an item's free tags are found too.
        """
        candidates: list[Mention] = []
        if self._pattern is not None:
            for m in self._pattern.finditer(text):
                category, canonical = self._lookup[normalise(m.group())]
                candidates.append(Mention(m.start(), m.end(), m.group(), canonical, category))
        unknown = {normalise(t): (c, t.strip()) for c, ts in (extra or {}).items() for t in ts if t.strip() and not self.lookup(t)}
        extra_pattern = _compile(list(unknown))
        if extra_pattern is not None:
            for m in extra_pattern.finditer(text):
                category, tag = unknown[normalise(m.group())]
                candidates.append(Mention(m.start(), m.end(), m.group(), tag, category))
        chosen: list[Mention] = []
        for cand in sorted(candidates, key=lambda m: (m.start - m.end, m.start)):
            if all(cand.end <= c.start or cand.start >= c.end for c in chosen):
                chosen.append(cand)
        return sorted(chosen, key=lambda m: m.start)


def _closure(start: str, edges: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _relatives(categories: Mapping[str, Mapping[str, Sequence[str]]], relations: Mapping[str, Mapping],
               source: str) -> dict[str, set[str]]:
    """Normalised canonical tag -> ancestors, descendants and near-synonyms, from each category's
    `broader` ({tag: [broader tags]}) and `similar` ([[tags that are never swapped for each other]])."""
    up: dict[str, set[str]] = {}
    down: dict[str, set[str]] = {}
    similar: dict[str, set[str]] = {}
    for category, rel in relations.items():
        known = {normalise(t) for t in categories.get(category, {})}
        where = f"{source}: category {category!r}"

        def check(tag: str) -> str:
            key = normalise(tag)
            if key not in known:
                raise VocabularyError(f"{where}: relation names {tag!r}, which is not a tag of this category; add it under 'tags'")
            return key

        for child, parents in rel.get("broader", {}).items():
            for parent in parents:
                up.setdefault(check(child), set()).add(check(parent))
                down.setdefault(check(parent), set()).add(check(child))
        for group in rel.get("similar", []):
            keys = {check(t) for t in group}
            for k in keys:
                similar.setdefault(k, set()).update(keys - {k})
    return {k: _closure(k, up) | _closure(k, down) | similar.get(k, set())
            for k in set(up) | set(down) | set(similar)}


def _parse_relations(name: str, spec: dict, source: str) -> dict:
    where = f"{source}: category {name!r}"
    broader, similar = spec.get("broader", {}), spec.get("similar", [])
    if not isinstance(broader, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                                for v in broader.values()):
        raise VocabularyError(f"{where}: 'broader' must map a tag to a list of its broader tags")
    if not isinstance(similar, list) or not all(isinstance(g, list) and all(isinstance(t, str) for t in g) for g in similar):
        raise VocabularyError(f"{where}: 'similar' must be a list of lists of tags")
    return {"broader": broader, "similar": similar}


def _parse_all_relations(raw: object, source: str) -> dict[str, dict]:
    """Each category's relations (`broader`, `similar`), validated for shape; tags are checked later."""
    cats = raw.get("categories", {}) if isinstance(raw, dict) else {}
    return {name: _parse_relations(name, spec, source) for name, spec in cats.items()
            if isinstance(spec, dict) and ("broader" in spec or "similar" in spec)}


def _merge_relations(base: dict[str, dict], user: dict[str, dict], categories: dict[str, dict[str, list[str]]]) -> dict:
    """Base relations plus the user's, keeping only entries whose tags all still exist in their category."""
    out: dict[str, dict] = {}
    for name in set(base) | set(user):
        keys = {normalise(t) for t in categories.get(name, {})}
        ok = lambda tags: all(normalise(t) in keys for t in tags)  # noqa: E731
        b, u = base.get(name, {}), user.get(name, {})
        broader = {c: p for c, p in {**b.get("broader", {}), **u.get("broader", {})}.items() if ok([c, *p])}
        similar = [g for g in [*b.get("similar", []), *u.get("similar", [])] if ok(g)]
        out[name] = {"broader": broader, "similar": similar}
    return out


def _parse(raw: object, source: str) -> tuple[dict[str, dict[str, list[str]]], dict[str, list[str]]]:
    """Validate the file format into (categories, swap dictionary); relations are read separately."""
    if not isinstance(raw, dict) or not isinstance(raw.get("categories"), dict):
        raise VocabularyError(f"{source}: expected an object with a 'categories' object (see duetmc/resources/tags.json)")
    categories: dict[str, dict[str, list[str]]] = {}
    swap: dict[str, list[str]] = {}
    for name, spec in raw["categories"].items():
        where = f"{source}: category {name!r}"
        if name == OTHER:
            raise VocabularyError(f"{where}: '{OTHER}' is reserved for tags outside the vocabulary")
        if isinstance(spec, list):  # shorthand: a plain list of tags, no synonyms, not swapped
            spec = {"tags": {t: [] for t in spec}}
        if not isinstance(spec, dict) or not isinstance(spec.get("tags"), dict):
            raise VocabularyError(f"{where}: expected {{'tags': {{tag: [synonyms]}}, 'swap': true|false|[tags]}} or a list of tags")
        tags: dict[str, list[str]] = {}
        for tag, synonyms in spec["tags"].items():
            if not isinstance(synonyms, list) or not all(isinstance(s, str) and s.strip() for s in synonyms):
                raise VocabularyError(f"{where}: tag {tag!r} needs a list of non-empty synonym strings")
            if not tag.strip():
                raise VocabularyError(f"{where}: empty tag name")
            tags[tag.strip()] = [s.strip() for s in synonyms]
        categories[name] = tags
        rule = spec.get("swap", False)
        if rule is True:
            swap[name] = list(tags)
        elif isinstance(rule, list):
            strange = [w for w in rule if w not in tags]
            if strange:
                raise VocabularyError(f"{where}: swap words {strange} are not tags of this category; add them under 'tags'")
            swap[name] = list(rule)
        elif rule is not False:
            raise VocabularyError(f"{where}: 'swap' must be true, false or a list of tags, got {rule!r}")
    return categories, swap


def _read(path: Path | None) -> tuple[object, str]:
    if path is None:
        text = resources.files("duetmc").joinpath("resources", "tags.json").read_text(encoding="utf-8")
        return json.loads(text), "duetmc/resources/tags.json"
    if not path.exists():
        raise VocabularyError(f"{path}: vocabulary file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except json.JSONDecodeError as exc:
        raise VocabularyError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """The package vocabulary, or a user file that replaces it (or adds to it with "extends": "default")."""
    if path is None:
        return default_vocabulary()
    raw, source = _read(Path(path))
    categories, swap = _parse(raw, source)
    relations = _parse_all_relations(raw, source)
    if isinstance(raw, dict) and raw.get("extends") == "default":
        base_raw = _read(None)[0]
        base_categories, base_swap = _parse(base_raw, "duetmc/resources/tags.json")
        # The user's entries win: drop default forms that the user file now assigns elsewhere.
        claimed = {normalise(f) for tags in categories.values() for t, syns in tags.items() for f in (t, *syns)}
        for name, tags in base_categories.items():
            kept = {t: [s for s in syns if normalise(s) not in claimed] for t, syns in tags.items() if normalise(t) not in claimed}
            categories[name] = {**kept, **categories.get(name, {})}
            if name in base_swap and name not in swap:
                swap[name] = [t for t in base_swap[name] if t in categories[name]]
        categories = {**{n: categories[n] for n in base_categories}, **categories}
        relations = _merge_relations(_parse_all_relations(base_raw, "duetmc/resources/tags.json"), relations, categories)
    elif isinstance(raw, dict) and raw.get("extends") not in (None, "default"):
        raise VocabularyError(f"{source}: 'extends' may only be \"default\", got {raw['extends']!r}")
    return Vocabulary(categories, swap, source, relations)


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The packaged vocabulary, parsed once per process."""
    raw, source = _read(None)
    return Vocabulary(*_parse(raw, source), source, _parse_all_relations(raw, source))


def warn_unknown(unknown: Sequence[str], where: str = "") -> None:
    """One warning that counts the tags kept under `other`, with a few examples and the fix."""
    if not unknown:
        return
    distinct = list(dict.fromkeys(unknown))
    examples = ", ".join(repr(t) for t in distinct[:5])
    prefix = f"{where}: " if where else ""
    warnings.warn(
        f"{prefix}{len(unknown)} tag(s) ({len(distinct)} distinct, e.g. {examples}) are not in the vocabulary; "
        f"kept under '{OTHER}'. To categorise them, pass a vocabulary file (--vocab) that lists them.",
        UserWarning,
        stacklevel=2,
    )
