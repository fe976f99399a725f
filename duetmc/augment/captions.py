"""Tag-to-caption: turn expert tags into a one-sentence caption (docs/DESIGN.md §2).

Three backends share one interface, `caption_many(requests) -> captions`:
  template  offline default; deterministic given the request seed; mentions every tag given, no other
  llm       any OpenAI-compatible chat or completions endpoint (vLLM, TGI, llama.cpp server...), with a
            few-shot prompt, bounded concurrency, retries with backoff and an on-disk cache
  hf        a local transformers causal LM, greedy decoding
An LLM caption that is empty, too long or mentions none of its tags is retried, then replaced by the
template caption and recorded with source="fallback"; an unusable HF caption is replaced at once
(greedy decoding would only repeat it).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from duetmc.augment.vocab import OTHER, Vocabulary, default_vocabulary, normalise
from duetmc.errors import DuetmcError
from duetmc.atomic import atomic_write_text

CAPTIONERS = ("template", "llm", "hf")


class CaptionerError(DuetmcError, ValueError):
    """A captioner is misconfigured (missing endpoint, model path...); the message says what to pass."""


@dataclass(frozen=True)
class CaptionRequest:
    tags: dict[str, list[str]]  # category -> tags, in the order they should be mentioned
    seed: int = 0

    @property
    def flat(self) -> list[str]:
        return [t for ts in self.tags.values() for t in ts]


@dataclass(frozen=True)
class Caption:
    text: str
    source: str  # template, llm, hf or fallback


@dataclass
class CaptionStats:
    """What a model-backed captioner did; `errors` keeps the first few failure messages."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    fallbacks: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"requests": self.requests, "cache_hits": self.cache_hits, "retries": self.retries, "fallbacks": self.fallbacks, "errors": self.errors}


class Captioner(Protocol):
    name: str

    def caption_many(self, requests: Sequence[CaptionRequest]) -> list[Caption]: ...


def check_caption(text: str, tags: Sequence[str], vocab: Vocabulary, max_chars: int) -> str | None:
    """Why a generated caption is unusable, or None when it is fine."""
    if not text.strip():
        return "empty caption"
    if len(text) > max_chars:
        return f"caption longer than {max_chars} characters"
    wanted = {normalise(vocab.canonical(t)) for t in tags}
    found = {normalise(m.tag) for m in vocab.find_mentions(text, extra={OTHER: list(tags)})}
    if not wanted & found:
        return "caption mentions none of its tags"
    return None


def clean_generation(text: str) -> str:
    """The first non-empty line of a model's answer, without a 'Caption:' prefix or quotes."""
    for line in text.strip().splitlines():
        line = line.strip()
        if line.lower().startswith("caption:"):
            line = line[len("caption:") :].strip()
        line = line.strip("\"'“”").strip()
        if line:
            return line
    return ""


# --- template ---------------------------------------------------------------------------------

_NOUNS = ("track", "piece", "song", "tune", "composition", "recording", "number", "cut")
_INSTRUMENT_CLAUSES = ("featuring {}", "with {}", "built on {}", "driven by {}", "played on {}", "led by {}", "layered with {}", "arranged for {}")
_TEMPO_CLAUSES = ("at a {} tempo", "taken at a {} tempo", "moving at a {} tempo")
_EXTRA_SENTENCES = ("{Label}: {tags}.", "It can also be described as {tags}.", "Further descriptors: {tags}.", "Also tagged {tags}.")
_CATEGORY_SENTENCES = {
    "bpm": ("It runs at {tags} BPM.", "The tempo is {tags} BPM."),
    "key": ("It is in {tags}.", "Key: {tags}."),
    "vocals": ("Vocals: {tags}.", "It features {tags}."),
    "era": ("Era: {tags}.", "It evokes the {tags}."),
}
# Main sentences. {a_desc}: "a happy rock track"; {desc}: "happy rock track"; {instr}: ", featuring piano";
# {instruments}: "piano and drums"; {tempo}: ", at a slow tempo"; {moods}/{genres}/{noun} as written.
_PATTERNS: tuple[tuple[str, frozenset[str]], ...] = (
    ("{A_desc}{instr}{tempo}.", frozenset()),
    ("This is {a_desc}{instr}{tempo}.", frozenset()),
    ("Here is {a_desc}{instr}{tempo}.", frozenset()),
    ("{A_genre_noun} with {a_moods} feel{instr}{tempo}.", frozenset({"mood"})),
    ("{A_genre_noun} that sounds {moods}{instr}{tempo}.", frozenset({"mood"})),
    ("Built around {instruments}, this {desc} unfolds{tempo}.", frozenset({"instrument"})),
    ("You can hear {instruments} in this {desc}{tempo}.", frozenset({"instrument"})),
    ("In this {desc}, {instruments} can be heard{tempo}.", frozenset({"instrument"})),
    ("This {desc} is carried by {instruments}{tempo}.", frozenset({"instrument"})),
    ("{A_desc} that showcases {instruments}{tempo}.", frozenset({"instrument"})),
    ("{A_desc}{tempo}, where {instruments} take the spotlight.", frozenset({"instrument"})),
    ("The {noun} is {a_desc_bare}{instr}{tempo}.", frozenset({"genre"})),
    ("A {noun} in the {genres} style, {moods} in character{instr}{tempo}.", frozenset({"genre", "mood"})),
    ("{Moods} in character, this is {a_genre_noun}{instr}{tempo}.", frozenset({"mood"})),
)


def _join(words: Sequence[str]) -> str:
    return "".join(words) if len(words) <= 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class TemplateCaptioner:
    """Offline tag-to-caption: many sentence patterns, every given tag mentioned, nothing invented.

    Each caption is checked against the vocabulary; when tags happen to run together into another tag
    ("heavy" + "metal" reads as "heavy metal"), another pattern is tried, and at last a plain list.
    """

    name = "template"

    def __init__(self, vocab: Vocabulary | None = None, attempts: int = 8):
        self.vocab = vocab or default_vocabulary()
        self.attempts = attempts

    def caption_many(self, requests: Sequence[CaptionRequest]) -> list[Caption]:
        return [Caption(self.caption(r), self.name) for r in requests]

    def caption(self, request: CaptionRequest) -> str:
        tags = request.flat
        if not tags:
            raise ValueError("a caption needs at least one tag")
        rng = random.Random(request.seed)
        for _ in range(self.attempts):
            text = self._compose(request.tags, rng)
            if self._exact(text, request.tags):
                return text
        return f"A {rng.choice(_NOUNS)} described by: " + "; ".join(tags) + "."

    def _exact(self, text: str, tags: Mapping[str, Sequence[str]]) -> bool:
        wanted = {normalise(self.vocab.canonical(t)) for ts in tags.values() for t in ts}
        found = [normalise(m.tag) for m in self.vocab.find_mentions(text, extra=tags)]
        return set(found) == wanted and len(found) == len(wanted)

    def _compose(self, tags: Mapping[str, Sequence[str]], rng: random.Random) -> str:
        def shuffled(cat: str) -> list[str]:
            words = list(tags.get(cat, []))
            rng.shuffle(words)
            return words

        genres, moods, instruments, tempos = shuffled("genre"), shuffled("mood"), shuffled("instrument"), shuffled("tempo")
        present = {c for c in ("genre", "mood", "instrument") if tags.get(c)}
        noun = rng.choice(_NOUNS)
        g, m, i = _join(genres), _join(moods), _join(instruments)
        genre_noun = f"{g} {noun}".strip()
        desc = " ".join(w for w in (m, g, noun) if w)
        tempo = ""
        if tempos:
            clauses = []
            for t in tempos:
                clauses.append(f"at a {t}" if normalise(t).endswith("tempo") else rng.choice(_TEMPO_CLAUSES).format(t))
            tempo = ", " + " and ".join(clauses)
        slots = {
            "a_desc": _article(desc),
            "desc": desc,
            "a_desc_bare": _article(" ".join(w for w in (m, g) if w)),
            "instr": (rng.choice((", ", " ")) + rng.choice(_INSTRUMENT_CLAUSES).format(i)) if i else "",
            "instruments": i,
            "tempo": tempo,
            "moods": m,
            "a_moods": _article(m) if m else "",
            "genres": g,
            "genre_noun": genre_noun,
            "a_genre_noun": _article(genre_noun),
            "noun": noun,
        }
        slots.update({k[0].upper() + k[1:]: _cap(v) for k, v in list(slots.items())})
        pattern = rng.choice([p for p, needs in _PATTERNS if needs <= present])
        sentences = [pattern.format(**slots)]
        for cat, words in tags.items():
            if cat in ("genre", "mood", "instrument", "tempo") or not words:
                continue
            template = rng.choice(_CATEGORY_SENTENCES.get(cat, _EXTRA_SENTENCES))
            sentences.append(template.format(Label=cat.capitalize(), tags=_join(list(words))))
        return " ".join(sentences)


# --- prompting (shared by llm and hf) ---------------------------------------------------------

_INSTRUCTION = (
    "Write a one-sentence description of a piece of music from its tags. Mention every tag, "
    "and do not add instruments, genres or moods that are not tagged."
)
_EXAMPLES = (
    ("rock, energetic, electric guitar, drums, fast", "An energetic rock track driven by electric guitar and drums at a fast tempo."),
    ("jazz, mellow, piano, double bass", "A mellow jazz piece where piano and double bass trade unhurried phrases."),
    ("ambient, dreamy, synth pad, slow", "A slow, dreamy ambient piece built on evolving synth pads."),
)


def chat_messages(tags: Sequence[str]) -> list[dict]:
    messages = [{"role": "system", "content": _INSTRUCTION}]
    for example_tags, caption in _EXAMPLES:
        messages += [{"role": "user", "content": f"Tags: {example_tags}"}, {"role": "assistant", "content": caption}]
    messages.append({"role": "user", "content": f"Tags: {', '.join(tags)}"})
    return messages


def completion_prompt(tags: Sequence[str]) -> str:
    shots = "".join(f"Tags: {t}\nCaption: {c}\n\n" for t, c in _EXAMPLES)
    return f"{_INSTRUCTION}\n\n{shots}Tags: {', '.join(tags)}\nCaption:"


# --- llm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMConfig:
    endpoint: str  # base URL such as http://host:8000/v1, or the full .../chat/completions URL
    model: str
    api: str = "chat"  # chat or completions
    concurrency: int = 4
    retries: int = 3  # extra attempts after the first, for errors, timeouts and unusable captions
    backoff_s: float = 1.0  # wait before retry n is backoff_s * 2**(n-1)
    timeout_s: float = 60.0
    max_chars: int = 300
    max_tokens: int = 96
    temperature: float = 0.7
    cache_dir: Path | None = None  # None: no cache
    api_key: str | None = None
    # stop the run when this many prompts in a row failed to get any answer (server down, wrong URL)
    max_failures_in_a_row: int = 20

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise CaptionerError(f"api must be 'chat' or 'completions', got {self.api!r}")
        if not self.endpoint.startswith(("http://", "https://")):
            raise CaptionerError(f"endpoint must be an http(s) URL such as http://host:8000/v1, got {self.endpoint!r}")
        if not self.model:
            raise CaptionerError("the llm captioner needs a model name (--model)")
        if self.concurrency < 1 or self.retries < 0:
            raise CaptionerError("concurrency must be >= 1 and retries >= 0")

    @property
    def url(self) -> str:
        suffix = "/chat/completions" if self.api == "chat" else "/completions"
        base = self.endpoint.rstrip("/")
        for known in ("/chat/completions", "/completions"):
            if base.endswith(known):
                base = base[: -len(known)]
        return base + suffix


class LLMCaptioner:
    """Captions from an OpenAI-compatible HTTP endpoint; see the module docstring."""

    name = "llm"

    def __init__(self, config: LLMConfig, vocab: Vocabulary | None = None):
        self.config = config
        self.vocab = vocab or default_vocabulary()
        self.fallback = TemplateCaptioner(self.vocab)
        self.stats = CaptionStats()
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self._broken: str | None = None

    def caption_many(self, requests: Sequence[CaptionRequest]) -> list[Caption]:
        # Identical tag lists share one request: views of different items often coincide.
        unique = list(dict.fromkeys(tuple(r.flat) for r in requests))
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            answers = dict(zip(unique, pool.map(self._caption_tags, unique)))
        out = []
        for r in requests:
            text = answers[tuple(r.flat)]
            out.append(Caption(text, self.name) if text is not None else Caption(self.fallback.caption(r), "fallback"))
        with self._lock:
            self.stats.fallbacks += sum(1 for c in out if c.source == "fallback")
        return out

    def _payload(self, tags: Sequence[str]) -> dict:
        c = self.config
        body: dict = {"model": c.model, "max_tokens": c.max_tokens, "temperature": c.temperature}
        if c.api == "chat":
            body["messages"] = chat_messages(tags)
        else:
            body["prompt"] = completion_prompt(tags)
            body["stop"] = ["\n"]
        return body

    def _cache_path(self, body: dict) -> Path | None:
        if self.config.cache_dir is None:
            return None
        prompt = body.get("messages") or body.get("prompt")
        key = hashlib.sha256(json.dumps([prompt, self.config.model, self.config.api], sort_keys=True).encode()).hexdigest()
        return Path(self.config.cache_dir) / key[:2] / f"{key}.json"

    def _caption_tags(self, tags: tuple[str, ...]) -> str | None:
        return self.ask(self._payload(tags), lambda text: check_caption(text, tags, self.vocab, self.config.max_chars),
                        f"tags {', '.join(tags)!r}")

    def ask(self, body: dict, check, label: str) -> str | None:
        """The server's cleaned answer to `body` that `check` accepts (None = fine), cached on disk;
        None after the retries. Shared by captions and translations (duetmc.augment.translate)."""
        cache = self._cache_path(body)
        if cache is not None and cache.exists():
            try:
                text = json.loads(cache.read_text(encoding="utf-8"))["text"]
                with self._lock:
                    self.stats.cache_hits += 1
                return text
            except (json.JSONDecodeError, KeyError, OSError):
                pass  # a torn or foreign file: ask again and overwrite it
        answered = False
        for attempt in range(self.config.retries + 1):
            if self._broken:
                raise CaptionerError(self._broken)
            if attempt:
                with self._lock:
                    self.stats.retries += 1
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            final = False
            try:
                text = clean_generation(self._post(body))
                answered = True
                problem = check(text)
            except urllib.error.HTTPError as exc:
                problem = f"HTTPError: {exc}"
                final = 400 <= exc.code < 500 and exc.code not in (408, 429)  # a bad request stays bad
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # connection, timeout, bad JSON
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                if cache is not None:
                    # whole or not at all: concurrent runs never read half a cache entry
                    atomic_write_text(cache, json.dumps({"text": text, "model": self.config.model,
                                                         "api": self.config.api}, ensure_ascii=False))
                with self._lock:
                    self._failures_in_a_row = 0
                return text
            with self._lock:
                if len(self.stats.errors) < 10:
                    self.stats.errors.append(f"{label}, attempt {attempt + 1}: {problem}")
            if final:
                break
        with self._lock:
            self._failures_in_a_row = 0 if answered else self._failures_in_a_row + 1
            if self._failures_in_a_row >= self.config.max_failures_in_a_row and not self._broken:
                self._broken = (f"{self.config.url}: {self._failures_in_a_row} prompts in a row got no usable answer "
                                f"(last: {problem}); check --endpoint, --model and --api, and that the server is up")
        if self._broken:
            raise CaptionerError(self._broken)
        return None

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        req = urllib.request.Request(self.config.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with self._lock:
            self.stats.requests += 1
        with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        choice = data["choices"][0]
        return choice["message"]["content"] if self.config.api == "chat" else choice["text"]


# --- hf ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFConfig:
    path: Path  # a local directory with a causal LM and its tokenizer (save_pretrained layout)
    max_new_tokens: int = 60
    max_chars: int = 300
    device: str = "cpu"


class HFCaptioner:
    """Captions from a local transformers causal LM with greedy decoding (so one attempt each)."""

    name = "hf"

    def __init__(self, config: HFConfig, vocab: Vocabulary | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(config.path)
        if not path.is_dir():
            raise CaptionerError(f"{path}: no such model directory; --model must be a local save_pretrained folder for --captioner hf")
        self.config = config
        self.vocab = vocab or default_vocabulary()
        self.fallback = TemplateCaptioner(self.vocab)
        self.stats = CaptionStats()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(config.device).eval()

    def generate(self, tags: Sequence[str]) -> str:
        """The model's raw continuation of the few-shot prompt (prompt tokens removed)."""
        import torch

        enc = self.tokenizer(completion_prompt(tags), return_tensors="pt").to(self.config.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.config.max_new_tokens, do_sample=False, pad_token_id=pad)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def caption_many(self, requests: Sequence[CaptionRequest]) -> list[Caption]:
        out = []
        for r in requests:
            self.stats.requests += 1
            text = clean_generation(self.generate(r.flat))
            problem = check_caption(text, r.flat, self.vocab, self.config.max_chars)
            if problem is None:
                out.append(Caption(text, self.name))
                continue
            self.stats.fallbacks += 1
            if len(self.stats.errors) < 10:
                self.stats.errors.append(f"tags {', '.join(r.flat)!r}: {problem}")
            out.append(Caption(self.fallback.caption(r), "fallback"))
        return out
