"""Machine translation of human captions for multilingual evaluation (the paper's Table 3).

Each English human caption is translated into each requested language through the same
OpenAI-compatible client as the LLM captioner (`LLMCaptioner.ask`: bounded concurrency, retries,
on-disk cache), and becomes a caption record in that language with source "translation". The
evaluator counts such queries as human (a translation of a human caption; docs/PROTOCOL.md) and
reports them by source. A caption that gets no usable translation is left out and counted, never
replaced by English text.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from duetmc.augment.captions import CaptionerError, LLMCaptioner

LANGUAGES = {"de": "German", "fr": "French", "it": "Italian", "es": "Spanish", "pt": "Portuguese", "nl": "Dutch",
             "pl": "Polish", "ru": "Russian", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "tr": "Turkish"}
SOURCE = "translation"


def parse_languages(value: str | Sequence[str]) -> tuple[str, ...]:
    """'de,fr' -> ('de', 'fr'); unknown codes are refused with the list of known ones."""
    codes = [c.strip().lower() for c in (value.split(",") if isinstance(value, str) else value) if c.strip()]
    unknown = [c for c in codes if c not in LANGUAGES]
    if unknown or not codes:
        raise CaptionerError(f"--translate takes language codes from {sorted(LANGUAGES)}, got {value!r}")
    if "en" in codes:
        raise CaptionerError("--translate: captions are translated from English; leave 'en' out")
    return tuple(dict.fromkeys(codes))


def _body(client: LLMCaptioner, text: str, lang: str) -> dict:
    name = LANGUAGES[lang]
    c = client.config
    body: dict = {"model": c.model, "max_tokens": 4 * c.max_tokens, "temperature": 0.0}
    instruction = f"Translate the English description of a piece of music into {name}. Answer with the translation only."
    if c.api == "chat":
        body["messages"] = [{"role": "system", "content": instruction}, {"role": "user", "content": f"English: {text}"}]
    else:
        body["prompt"] = f"{instruction}\n\nEnglish: {text}\n{name}:"
        body["stop"] = ["\n"]
    return body


class LLMTranslator:
    """Translations through an `LLMCaptioner`'s client (its config, cache and statistics)."""

    def __init__(self, client: LLMCaptioner):
        self.client = client
        self.failed = 0

    def _check(self, source: str):
        limit = 3 * self.client.config.max_chars + len(source)

        def check(text: str) -> str | None:
            if not text.strip():
                return "empty translation"
            if text.strip() == source.strip():
                return "the answer is the untranslated English text"
            if len(text) > limit:
                return f"translation longer than {limit} characters"
            return None
        return check

    def translate_many(self, texts: Sequence[str], lang: str) -> list[str | None]:
        """One translation (or None) per text, in order; identical texts share one request."""
        unique = list(dict.fromkeys(texts))

        def one(text: str) -> str | None:
            return self.client.ask(_body(self.client, text, lang), self._check(text), f"translate to {lang}: {text[:40]!r}")

        with ThreadPoolExecutor(max_workers=self.client.config.concurrency) as pool:
            answers = dict(zip(unique, pool.map(one, unique)))
        out = [answers[t] for t in texts]
        self.failed += sum(1 for t in out if t is None)
        return out
