"""The paper's listening study (§5.2): pairwise trials in one SQLite file, participants and their answers.

A trial is one prompt (a human caption from an evaluation set) and two clips: two systems' top-1
results, or a system's top-1 and the true clip (`--ground-truth`, system name "truth"). Which clip is
A and which is B is drawn from the study's seed and recorded. Pairs whose two clips are the same clip
are skipped: there is nothing to compare.

Participants are known by a random secret token (their link); every read and write of answers goes
through it, so nobody can read another participant's answers. An answer is keyed by (participant,
trial): the first answer stands, and sending it again (a refresh, a double click) changes nothing.
The file uses WAL so the server can write answers while a report reads.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from duetmc.errors import DuetmcError, PathError

CHOICES = ("A", "B", "tie")
TRUTH = "truth"
DEFAULT_PER_PARTICIPANT = 24
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY, prompt TEXT NOT NULL, dataset TEXT NOT NULL, prompt_clip TEXT,
    system_a TEXT NOT NULL, clip_a TEXT NOT NULL, audio_a TEXT NOT NULL, start_a REAL, end_a REAL,
    system_b TEXT NOT NULL, clip_b TEXT NOT NULL, audio_b TEXT NOT NULL, start_b REAL, end_b REAL);
CREATE TABLE IF NOT EXISTS participants (
    id INTEGER PRIMARY KEY, token TEXT NOT NULL UNIQUE, label TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    participant INTEGER NOT NULL REFERENCES participants(id), position INTEGER NOT NULL,
    trial INTEGER NOT NULL REFERENCES trials(id), PRIMARY KEY (participant, position),
    UNIQUE (participant, trial));
CREATE TABLE IF NOT EXISTS answers (
    participant INTEGER NOT NULL REFERENCES participants(id), trial INTEGER NOT NULL REFERENCES trials(id),
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie')), answered REAL NOT NULL,
    PRIMARY KEY (participant, trial));
"""


class StudyError(DuetmcError, ValueError):
    """A study file, plan or answer that cannot be used (the message says which and why)."""


class NotFoundError(StudyError):
    """An unknown participant token, or a trial that is not one of this participant's."""


class AnsweredError(StudyError):
    """A different answer to a trial that already has one (the first answer stands)."""


@dataclass(frozen=True)
class Clip:
    """One system's clip: its id and where its audio is (file and segment in seconds)."""

    system: str
    id: str
    audio: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class Prompt:
    text: str
    dataset: str
    clip_id: str | None = None  # the clip the caption describes (the ground truth), when known


@dataclass(frozen=True)
class Trial:
    prompt: Prompt
    a: Clip
    b: Clip


def plan_trials(prompts: list[Prompt], top1: dict[str, list[Clip | None]], truth: list[Clip | None] | None,
                n_trials: int, seed: int = 0) -> list[Trial]:
    """Pairs for each prompt, in a seeded order of prompts, until `n_trials` trials.

    `top1[system][i]` is the system's top clip for prompts[i]; `truth[i]` the true clip (None: unknown,
    so no truth pair for that prompt). Pairs with the same clip on both sides are skipped."""
    rng = random.Random(seed)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    systems = sorted(top1)
    trials: list[Trial] = []
    for i in order:
        pairs = [(top1[s][i], top1[t][i]) for s, t in combinations(systems, 2)]
        if truth is not None:
            pairs += [(top1[s][i], truth[i]) for s in systems]
        for x, y in pairs:
            if x is None or y is None or (x.audio, x.start, x.end) == (y.audio, y.start, y.end):
                continue
            if rng.random() < 0.5:
                x, y = y, x
            trials.append(Trial(prompts[i], x, y))
            if len(trials) == n_trials:
                return trials
    return trials


def connect(path: str | Path, create: bool = False) -> sqlite3.Connection:
    path = Path(path)
    if not create and not path.is_file():
        raise PathError(f"{path}: no such study file; make one with `duetmc study create`")
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise StudyError(f"{path}: not a usable study file ({exc}); give the file `duetmc study create` wrote") from exc
    return db


def write_study(out: str | Path, trials: list[Trial], meta: dict) -> Path:
    """A new study file holding `trials`; refuses to overwrite an existing one (it may hold answers)."""
    out = Path(out)
    if out.exists():
        raise PathError(f"{out}: already exists and may hold answers; choose another --out or remove it")
    if not trials:
        raise StudyError("no trials: every pair had the same clip on both sides or no prompts were given; "
                         "add systems, prompts or --ground-truth")
    out.parent.mkdir(parents=True, exist_ok=True)
    db = connect(out, create=True)
    with db:
        db.execute("BEGIN")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.executemany(
            "INSERT INTO trials (prompt, dataset, prompt_clip, system_a, clip_a, audio_a, start_a, end_a, "
            "system_b, clip_b, audio_b, start_b, end_b) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(t.prompt.text, t.prompt.dataset, t.prompt.clip_id, t.a.system, t.a.id, t.a.audio, t.a.start,
              t.a.end, t.b.system, t.b.id, t.b.audio, t.b.start, t.b.end) for t in trials])
    db.close()
    return out


def read_meta(db: sqlite3.Connection) -> dict:
    return {r["key"]: json.loads(r["value"]) for r in db.execute("SELECT key, value FROM meta")}


def add_participant(db: sqlite3.Connection, label: str, per_participant: int = DEFAULT_PER_PARTICIPANT,
                    seed: int = 0) -> dict:
    """A new participant with a secret token and up to `per_participant` trials: those judged least
    so far first (so trials gather several judgements for agreement), in a seeded random order."""
    label = " ".join(str(label).split())[:80]
    token = secrets.token_urlsafe(24)
    with db:
        db.execute("BEGIN IMMEDIATE")
        pid = db.execute("INSERT INTO participants (token, label, created) VALUES (?, ?, ?)",
                         (token, label, time.time())).lastrowid
        label = label or f"P{pid:03d}"
        db.execute("UPDATE participants SET label = ? WHERE id = ?", (label, pid))
        counts = db.execute("SELECT t.id, COUNT(a.trial) AS n FROM trials t LEFT JOIN assignments a "
                            "ON a.trial = t.id GROUP BY t.id").fetchall()
        rng = random.Random(f"{seed}:{pid}")
        ranked = sorted(counts, key=lambda r: (r["n"], rng.random()))[:per_participant]
        chosen = [r["id"] for r in ranked]
        rng.shuffle(chosen)
        db.executemany("INSERT INTO assignments VALUES (?, ?, ?)", [(pid, i, t) for i, t in enumerate(chosen)])
    return {"participant": label, "token": token, "trials": len(chosen)}


def participant(db: sqlite3.Connection, token: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM participants WHERE token = ?", (str(token),)).fetchone()
    if row is None:
        raise NotFoundError("unknown participant link; start again from the study's first page")
    return row


def progress(db: sqlite3.Connection, token: str) -> dict:
    """This participant's trials (prompt, no system names) and their own answers so far."""
    p = participant(db, token)
    rows = db.execute("SELECT a.position, a.trial, t.prompt, ans.choice FROM assignments a "
                      "JOIN trials t ON t.id = a.trial LEFT JOIN answers ans "
                      "ON ans.participant = a.participant AND ans.trial = a.trial "
                      "WHERE a.participant = ? ORDER BY a.position", (p["id"],)).fetchall()
    trials = [{"position": r["position"], "trial": r["trial"], "prompt": r["prompt"], "answer": r["choice"]}
              for r in rows]
    return {"participant": p["label"], "trials": trials, "answered": sum(t["answer"] is not None for t in trials)}


def record_answer(db: sqlite3.Connection, token: str, trial: int, choice: str) -> dict:
    """Store one answer. The first answer to a trial stands; the same answer again is a no-op and a
    different one is refused, so no judgement is ever counted twice."""
    if choice not in CHOICES:
        raise StudyError(f"choice {str(choice)[:20]!r} is not one of {', '.join(CHOICES)}")
    p = participant(db, token)
    assigned = db.execute("SELECT 1 FROM assignments WHERE participant = ? AND trial = ?",
                          (p["id"], trial)).fetchone()
    if assigned is None:
        raise NotFoundError(f"trial {trial} is not one of this participant's trials")
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?)", (p["id"], trial, choice, time.time()))
        stored = db.execute("SELECT choice FROM answers WHERE participant = ? AND trial = ?",
                            (p["id"], trial)).fetchone()["choice"]
    if stored != choice:
        raise AnsweredError(f"trial {trial} was already answered {stored!r}; the first answer stands")
    return {"trial": trial, "answer": stored}


def trial_clip(db: sqlite3.Connection, token: str, trial: int, side: str) -> tuple[str, float | None, float | None]:
    """The audio (file, start, end) of one side of one of this participant's trials."""
    if side not in ("A", "B"):
        raise StudyError(f"side {str(side)[:20]!r} is not A or B")
    p = participant(db, token)
    s = side.lower()
    row = db.execute(f"SELECT t.audio_{s} AS audio, t.start_{s} AS start, t.end_{s} AS end FROM trials t "
                     "JOIN assignments a ON a.trial = t.id WHERE a.participant = ? AND t.id = ?",
                     (p["id"], trial)).fetchone()
    if row is None:
        raise NotFoundError(f"trial {trial} is not one of this participant's trials")
    return row["audio"], row["start"], row["end"]


def admin_progress(db: sqlite3.Connection) -> dict:
    rows = db.execute("SELECT p.label, p.created, COUNT(DISTINCT a.trial) AS assigned, COUNT(DISTINCT ans.trial) "
                      "AS answered FROM participants p LEFT JOIN assignments a ON a.participant = p.id "
                      "LEFT JOIN answers ans ON ans.participant = p.id GROUP BY p.id ORDER BY p.id").fetchall()
    n_trials = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    return {"trials": n_trials, "participants": [dict(r) for r in rows],
            "answers": sum(r["answered"] for r in rows)}


def answers(db: sqlite3.Connection) -> list[dict]:
    """Every answer with its trial, as the report and the CSV export see them."""
    rows = db.execute("SELECT p.label AS participant, ans.trial, t.dataset, t.prompt, t.prompt_clip, "
                      "t.system_a, t.clip_a, t.system_b, t.clip_b, ans.choice, ans.answered FROM answers ans "
                      "JOIN participants p ON p.id = ans.participant JOIN trials t ON t.id = ans.trial "
                      "ORDER BY ans.participant, ans.trial").fetchall()
    return [dict(r) for r in rows]


def read_prompts(path: str | Path, split: str | None) -> list[Prompt]:
    """Prompts from a JSONL file: {"text" (or "caption"), "id" (the true clip, optional), "dataset"
    (default: the file's name), "split" (optional; rows of another split than `split` are left out)}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PathError(f"{path}: {exc.strerror or exc}; give a JSONL file of captions") from exc
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StudyError(f"{path}:{n}: not JSON ({exc.msg}); each line is one object") from None
        text = row.get("text", row.get("caption")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise StudyError(f"{path}:{n}: needs a non-empty \"text\" (or \"caption\") string")
        if split and row.get("split") not in (None, split):
            continue
        clip = row.get("id")
        prompts.append(Prompt(text.strip(), str(row.get("dataset") or path.stem), None if clip is None else str(clip)))
    if not prompts:
        raise StudyError(f"{path}: no prompts{f' in split {split!r}' if split else ''}; check the file and --split")
    return prompts


def prompts_from_cache(cache: str, split: str) -> list[Prompt]:
    """Each clip of `split` in a cache with its first English caption (human captions come first)."""
    from duetmc.cache_spec import read_strings
    from duetmc.pairs import PairIndex, resolve_spec

    index = PairIndex(resolve_spec(cache))
    texts = read_strings(index.text["texts"])
    dataset = Path(cache.rstrip("/")).name
    prompts = [Prompt(str(texts[index.captions[k][0]]), dataset, str(index.ids[k]))
               for k in index.items(split) if index.captions[k]]
    if not prompts:
        raise StudyError(f"{cache}: no clip of split {split!r} has an English caption; choose another --split")
    return prompts


def _clip(system: str, hit: dict) -> Clip:
    return Clip(system, str(hit["id"]), str(hit["audio"]), hit.get("start"), hit.get("end"))


def top1_in_split(index, system: str, texts: list[str], split: str | None, batch: int = 64) -> list[Clip | None]:
    """Each text's best clip among the index's clips of `split` (None or "all": every clip)."""
    out: list[Clip | None] = []
    for lo in range(0, len(texts), batch):
        for hits in index.search_texts(texts[lo:lo + batch], k=len(index)):
            best = next((h for h in hits if split in (None, "all") or h.get("split") == split), None)
            out.append(None if best is None else _clip(system, best))
    return out


def _truth_clip(indexes: dict, clip_id: str | None) -> Clip | None:
    for index in indexes.values():
        try:
            return _clip(TRUTH, index.entry(clip_id)) if clip_id is not None else None
        except DuetmcError:
            continue
    return None


def create_study(out: str | Path, indexes: dict, prompts: list[Prompt], ground_truth: bool, split: str | None,
                 n_trials: int, seed: int = 0, per_participant: int = DEFAULT_PER_PARTICIPANT) -> dict:
    """Ask every system (name -> loaded duetmc.index.Index) for its top-1 clip per prompt, plan the
    trials and write the study file. Returns a summary (trials per pair, prompts without a truth clip)."""
    if TRUTH in indexes:
        raise StudyError(f"a system may not be called {TRUTH!r}: that name is the ground truth's")
    if len(indexes) < (1 if ground_truth else 2):
        raise StudyError("a study compares at least two systems (--index NAME=INDEX twice), or one with --ground-truth")
    texts = [p.text for p in prompts]
    top1 = {name: top1_in_split(index, name, texts, split) for name, index in indexes.items()}
    truth = [_truth_clip(indexes, p.clip_id) for p in prompts] if ground_truth else None
    trials = plan_trials(prompts, top1, truth, n_trials, seed)
    meta = {"systems": sorted(indexes), "ground_truth": ground_truth, "split": split, "seed": seed,
            "per_participant": per_participant, "created": time.time(), "prompts": len(prompts)}
    write_study(out, trials, meta)
    pairs: dict[str, int] = {}
    for t in trials:
        key = " vs ".join(sorted([t.a.system, t.b.system], key=lambda s: (s == TRUTH, s)))
        pairs[key] = pairs.get(key, 0) + 1
    missing = sum(c is None for c in truth) if truth is not None else 0
    return {"study": str(out), "trials": len(trials), "pairs": pairs, "prompts": len(prompts),
            "prompts_without_truth": missing}
