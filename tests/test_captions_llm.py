"""The llm captioner against a real OpenAI-wire-format server on 127.0.0.1, and the hf captioner on a tiny model.

The server reads the tags from the prompt's last 'Tags:' line and behaves by tag:
  flaky    the first request answers 500, later ones succeed
  slowpoke the first request hangs past the client timeout, later ones succeed
  garbage  always answers 200 with a body that is not JSON
  chatty   always answers a caption that mentions none of the tags
  empty    always answers an empty caption
otherwise it answers "A <tags> piece." (which mentions every tag).
A translation prompt ("English: <text>", "into <Language>") is answered "[<Language>] <text>", except
that a text containing "stubborn" comes back untranslated.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from duetmc.augment.captions import (
    CaptionRequest,
    CaptionerError,
    HFCaptioner,
    HFConfig,
    LLMCaptioner,
    LLMConfig,
    TemplateCaptioner,
    chat_messages,
    completion_prompt,
)
from duetmc.augment.vocab import OTHER

HANG_S = 3.0
TIMEOUT_S = 1.0


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.paths[self.path] += 1
        if self.path == "/v1/chat/completions":
            prompt = body["messages"][-1]["content"]
        elif self.path == "/v1/completions":
            prompt = body["prompt"]
        else:
            return self._send(404, b'{"error": "no such route"}')
        english = re.findall(r"English: (.*)", prompt)
        if english:
            source = english[-1].strip()
            with server.lock:
                server.calls[f"translate {source}"] += 1
            language = re.search(r"into (\w+)\.", json.dumps(body)).group(1)
            return self._answer(source if "stubborn" in source else f"[{language}] {source}")
        tags = re.findall(r"Tags: (.*)", prompt)[-1].strip()
        with server.lock:
            server.calls[tags] += 1
            n = server.calls[tags]
            server.models.add(body["model"])
        if "flaky" in tags and n == 1:
            return self._send(500, b'{"error": "overloaded"}')
        if "slowpoke" in tags and n == 1:
            time.sleep(HANG_S)
            return self._send(200, b"{}")
        if "garbage" in tags:
            return self._send(200, b"<html>definitely not json")
        self._answer({"chatty": "What a lovely day.", "empty": "  "}.get(tags.split(", ")[0], f"A {tags} piece."))

    def _answer(self, text: str):
        if self.path == "/v1/chat/completions":
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
        else:
            answer = {"choices": [{"index": 0, "text": " " + text + "\nTags: more", "finish_reason": "stop"}]}
        self._send(200, json.dumps(answer).encode())

    def _send(self, status: int, payload: bytes):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock, srv.paths, srv.calls, srv.models = threading.Lock(), Counter(), Counter(), set()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _config(server, tmp_path, **kw) -> LLMConfig:
    base = dict(endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1", model="tiny-llm", concurrency=3, retries=2,
                backoff_s=0.01, timeout_s=TIMEOUT_S, cache_dir=tmp_path / "cache")
    return LLMConfig(**{**base, **kw})


def _req(*tags: str, seed: int = 0) -> CaptionRequest:
    return CaptionRequest({OTHER: list(tags)}, seed)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_llm_retries_errors_and_timeouts_then_caches(server, tmp_path, api):
    reqs = [_req("rock", "happy"), _req("flaky", "jazz"), _req("slowpoke", "piano"), _req("rock", "happy", seed=9)]
    cap = LLMCaptioner(_config(server, tmp_path, api=api))
    out = cap.caption_many(reqs)
    assert [c.text for c in out] == ["A rock, happy piece.", "A flaky, jazz piece.", "A slowpoke, piano piece.", "A rock, happy piece."]
    assert {c.source for c in out} == {"llm"}
    route = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    # identical tags share one request; the 500 and the timeout each cost exactly one retry
    assert server.calls == Counter({"rock, happy": 1, "flaky, jazz": 2, "slowpoke, piano": 2})
    assert server.paths == Counter({route: 5}) and cap.stats.retries == 2 and cap.stats.requests == 5
    assert any("500" in e for e in cap.stats.errors) and any("timed out" in e for e in cap.stats.errors)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 3

    again = LLMCaptioner(_config(server, tmp_path, api=api))
    assert again.caption_many(reqs) == out
    assert sum(server.paths.values()) == 5 and again.stats.cache_hits == 3 and again.stats.requests == 0
    # the cache key holds the model and the endpoint kind: another model asks the server again
    LLMCaptioner(_config(server, tmp_path, api=api, model="other-llm")).caption_many(reqs[:1])
    assert sum(server.paths.values()) == 6 and server.models == {"tiny-llm", "other-llm"}


def test_llm_falls_back_to_the_template_for_garbage_and_unusable_captions(server, tmp_path):
    reqs = [_req("garbage", "rock", seed=1), _req("chatty", "jazz", seed=2), _req("empty", "funk", seed=3), _req("folk")]
    cap = LLMCaptioner(_config(server, tmp_path, max_chars=200))
    out = cap.caption_many(reqs)
    template = TemplateCaptioner()
    assert [c.source for c in out] == ["fallback", "fallback", "fallback", "llm"]
    assert [c.text for c in out[:3]] == [template.caption(r) for r in reqs[:3]]
    # three attempts each (retries=2), and failures are not cached
    assert server.calls == Counter({"garbage, rock": 3, "chatty, jazz": 3, "empty, funk": 3, "folk": 1})
    assert cap.stats.fallbacks == 3 and cap.stats.retries == 6
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1
    reasons = " ".join(cap.stats.errors)
    assert "JSONDecodeError" in reasons and "none of its tags" in reasons and "empty caption" in reasons
    # an over-long caption is unusable too
    long = LLMCaptioner(_config(server, tmp_path, max_chars=10, cache_dir=None)).caption_many([_req("blues")])
    assert long[0].source == "fallback"


def test_llm_does_not_retry_a_bad_request_and_stops_when_the_server_is_unreachable(server, tmp_path):
    wrong_route = LLMCaptioner(_config(server, tmp_path, endpoint=f"http://127.0.0.1:{server.server_address[1]}/v2"))
    out = wrong_route.caption_many([_req("rock"), _req("jazz")])
    assert [c.source for c in out] == ["fallback", "fallback"]
    assert server.paths == Counter({"/v2/chat/completions": 2}) and wrong_route.stats.retries == 0
    assert "HTTP Error 404" in wrong_route.stats.errors[0]

    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = LLMCaptioner(_config(server, tmp_path, endpoint=f"http://127.0.0.1:{port}/v1", retries=1, concurrency=2, max_failures_in_a_row=3))
    with pytest.raises(CaptionerError, match=r"3 prompts in a row got no usable answer .*check --endpoint"):
        down.caption_many([_req(f"tag{i}") for i in range(12)])
    assert down.stats.requests < 12 * 2  # it stopped early instead of retrying every prompt


def test_llm_config_is_checked_and_prompts_are_few_shot():
    with pytest.raises(CaptionerError, match="http"):
        LLMConfig(endpoint="node12:8000", model="m")
    with pytest.raises(CaptionerError, match="api"):
        LLMConfig(endpoint="http://x/v1", model="m", api="embeddings")
    assert LLMConfig(endpoint="http://x/v1/chat/completions", model="m", api="completions").url == "http://x/v1/completions"
    msgs = chat_messages(["rock", "happy"])
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": "Tags: rock, happy"}
    assert sum(m["role"] == "assistant" for m in msgs) == 3
    assert completion_prompt(["rock"]).endswith("Tags: rock\nCaption:")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 2-layer GPT-2 with a word-level tokenizer, built offline and saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    def build(words: list[str], name: str, only_words: bool = False):
        vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *words])}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=16, n_layer=2, n_head=2))
        if only_words:  # never emit <unk>/<eos>, so every generated token is one of `words`
            model.generation_config.suppress_tokens = [vocab["<unk>"], vocab["<eos>"]]
        path = tmp_path_factory.mktemp(name)
        fast.save_pretrained(path)
        model.save_pretrained(path)
        return path

    return {"no_tags": build(["the", "music", "is", "nice"], "lm_plain"), "rock": build(["rock"], "lm_rock", only_words=True)}


@pytest.mark.slow
def test_hf_captioner_runs_a_local_model_and_falls_back(tiny_lm):
    cap = HFCaptioner(HFConfig(path=tiny_lm["no_tags"], max_new_tokens=8))
    raw = cap.generate(["rock", "happy"])
    assert "Tags:" not in raw and set(raw.split()) <= {"the", "music", "is", "nice"}
    out = cap.caption_many([_req("rock", "happy", seed=4)])
    assert out[0].source == "fallback" and out[0].text == TemplateCaptioner().caption(_req("rock", "happy", seed=4))
    assert cap.stats.requests == 1 and cap.stats.fallbacks == 1
    # a model whose only word is a tag can only write captions that mention it
    rock = HFCaptioner(HFConfig(path=tiny_lm["rock"], max_new_tokens=6)).caption_many([_req("rock")])
    assert rock[0].source == "hf" and set(rock[0].text.split()) == {"rock"}
    with pytest.raises(CaptionerError, match="no such model directory"):
        HFCaptioner(HFConfig(path=tiny_lm["rock"] / "missing"))


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_translate_writes_captions_i18n_records_with_their_source_and_caches(server, tmp_path, api):
    from duetmc.augment.pipeline import run_augment
    from duetmc.augment.translate import LLMTranslator, parse_languages
    from duetmc.manifest import Item

    items = [Item("a", "a.wav", {"genre": ["rock"]}, ["a loud rock song"]),
             Item("b", "b.wav", {"genre": ["jazz"]}, ["a stubborn jazz tune"]),
             Item("c", "c.wav", {"genre": ["folk"]}, ["a folk song"], captions_i18n={"de": ["ein Volkslied"]})]
    client = LLMCaptioner(_config(server, tmp_path, api=api))
    result = run_augment(items, TemplateCaptioner(), n_views=0, translator=LLMTranslator(client),
                         languages=parse_languages("de,fr"))
    i18n = {(r.item, r.lang, r.source): r.text for r in result.records if r.kind == "caption" and r.lang != "en"}
    assert i18n == {("a", "de", "translation"): "[German] a loud rock song",
                    ("a", "fr", "translation"): "[French] a loud rock song",
                    ("c", "de", "human"): "ein Volkslied",  # the dataset's own German caption is kept, not translated
                    ("c", "fr", "translation"): "[French] a folk song"}
    # the untranslated answer is refused (after retries) and counted, never written as a translation
    assert result.report.translations == 3 and result.report.translations_failed == 2
    assert not any(r.kind == "swap" and r.lang != "en" for r in result.records)
    calls = sum(n for k, n in server.calls.items() if k.startswith("translate"))
    again = run_augment(items, TemplateCaptioner(), n_views=0, translator=LLMTranslator(LLMCaptioner(_config(server, tmp_path, api=api))),
                        languages=("de", "fr"))
    assert [r.text for r in again.records] == [r.text for r in result.records]
    # cached: only the refused ones are asked again
    assert sum(n for k, n in server.calls.items() if k.startswith("translate")) - calls == 2 * 3


def test_translate_cli_needs_a_server_and_known_languages(server, tmp_path):
    from click.testing import CliRunner

    from duetmc.cli import main
    from duetmc.manifest import Item, write_manifest

    write_manifest([Item("a", tmp_path / "a.wav", {"genre": ["rock"]}, ["a loud rock song"])], tmp_path / "m.jsonl")
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    args = ["augment", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "v.jsonl"), "--n-views", "0"]
    res = CliRunner().invoke(main, [*args, "--translate", "de"])
    assert res.exit_code != 0 and "--translate needs --endpoint" in res.output
    res = CliRunner().invoke(main, [*args, "--translate", "xx", "--endpoint", "http://x/v1", "--model", "m"])
    assert res.exit_code != 0 and "--translate takes language codes" in res.output
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    res = CliRunner().invoke(main, [*args, "--translate", "it", "--endpoint", url, "--model", "m",
                                    "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    assert "translations (it): 1 written, 0 failed" in res.output
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert {"item": "a", "kind": "caption", "text": "[Italian] a loud rock song", "lang": "it",
            "source": "translation"} in rows
