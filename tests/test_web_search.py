"""`duetmc serve` in a real browser: type a query, see ranked results, play one, more like this; and the
JSON API under bad input (empty query, huge k, unknown ids, traversal paths), with ranges and caching."""

from __future__ import annotations

import io
import json
import urllib.parse

import numpy as np
import pytest
import soundfile as sf
from web_fixtures import Server, browser, get, get_json, raw_get, request, screenshot, web_indexes  # noqa: F401

from duetmc.index import Index

pytestmark = pytest.mark.slow  # every test here needs the two small indexes (a featurized cache, two runs)


@pytest.fixture(scope="module")
def server(web_indexes, tmp_path_factory):  # noqa: F811
    s = Server(["serve", str(web_indexes["duetmc"])], "/api/health", tmp_path_factory.mktemp("serve") / "log")
    yield s
    s.stop()


def test_search_page_results_play_and_more_like_this(server, browser, web_indexes, tmp_path):  # noqa: F811
    index = Index.load(web_indexes["duetmc"])
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server.url + "/")
    page.fill("#q", "happy rock")
    page.fill("#k", "5")
    page.press("#q", "Enter")
    page.wait_for_selector("li.result")
    assert "q=happy+rock" in page.url and "k=5" in page.url  # the results page has its own URL
    shown = page.eval_on_selector_all("li.result", "els => els.map(e => e.dataset.id)")
    assert shown == [h["id"] for h in index.search_text("happy rock", k=5)]
    assert "score" in page.inner_text("li.result") and "split" in page.inner_text("li.result")
    screenshot(page, "search-results.png", tmp_path)

    page.evaluate("document.querySelector('li.result audio').play()")
    page.wait_for_function("(() => { const a = document.querySelector('li.result audio');"
                           " return !a.paused && a.currentTime > 0; })()", timeout=30000)
    first = index.entry(shown[0])
    status, _, body = get(f"{server.url}/api/audio?id={urllib.parse.quote(shown[0])}")
    data, sr = sf.read(io.BytesIO(body), dtype="float32")
    original, osr = sf.read(first["audio"], dtype="float32")
    lo, hi = round(first["start"] * osr), round(first["end"] * osr)
    assert status == 200 and sr == osr and np.allclose(data, original[lo:hi], atol=2 / 32768)

    page.click("li.result a.more")
    page.wait_for_url("**like=*")
    page.wait_for_selector("li.result")
    like = page.eval_on_selector_all("li.result", "els => els.map(e => e.dataset.id)")
    assert like == [h["id"] for h in index.search_like(shown[0], k=5)] and shown[0] not in like
    screenshot(page, "search-more-like-this.png", tmp_path)

    shared = browser.new_page()
    shared.goto(server.url + "/?q=calm+jazz&k=3")
    shared.wait_for_selector("li.result")
    assert shared.eval_on_selector_all("li.result", "els => els.length") == 3


def test_api_search_is_index_search_json(server, web_indexes):  # noqa: F811
    from click.testing import CliRunner

    from duetmc.cli import main

    cli = CliRunner().invoke(main, ["index", "search", str(web_indexes["duetmc"]), "sad metal", "-k", "7", "--json"])
    assert cli.exit_code == 0, cli.output
    status, body = get_json(server.url + "/api/search?q=sad+metal&k=7")
    assert status == 200 and body["results"] == json.loads(cli.stdout) and len(body["results"]) == 7
    status, body = get_json(server.url + "/api/search?q=sad+metal&k=1000")  # above the catalog: all of it
    assert status == 200 and len(body["results"]) == len(Index.load(web_indexes["duetmc"]))


def test_audio_ranges_and_caching_headers(server, web_indexes):  # noqa: F811
    clip = Index.load(web_indexes["duetmc"]).entries[0]["id"]
    url = f"{server.url}/api/audio?id={urllib.parse.quote(clip)}"
    status, headers, full = get(url)
    assert status == 200 and headers["accept-ranges"] == "bytes" and headers["etag"]
    assert "max-age" in headers["cache-control"] and int(headers["content-length"]) == len(full)
    status, headers, part = get(url, {"Range": "bytes=0-99"})
    assert (status, len(part), headers["content-range"]) == (206, 100, f"bytes 0-99/{len(full)}")
    assert part == full[:100]
    status, _, tail = get(url, {"Range": "bytes=-44"})
    assert status == 206 and tail == full[-44:]
    status, headers, body = get(url, {"Range": f"bytes={len(full)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(full)}" and json.loads(body)["status"] == 416
    assert get(url, {"If-None-Match": headers.get("etag") or get(url)[1]["etag"]})[0] == 304


def test_api_bad_input_is_json_and_the_server_stays_up(server):
    url = server.url
    cases = {"/api/search?q=": 400, "/api/search?q=%20%20": 400, "/api/search?q=x&k=0": 400,
             "/api/search?q=x&k=-3": 400, "/api/search?q=x&k=abc": 400, "/api/search?q=x&k=1000000000000": 400,
             "/api/search?q=" + "a" * 2000: 400, "/api/similar?id=": 400, "/api/similar?id=no-such-clip": 404,
             "/api/audio?id=no-such-clip": 404, "/api/audio": 400, "/nope": 404, "/static/nope.js": 404}
    for path, expected in cases.items():
        status, body = get_json(url + path)
        assert (status, body["status"]) == (expected, expected), (path, body)
        assert body["error"]
    for target in ["/api/audio?id=../../../../etc/passwd", "/api/audio?id=%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                   "/api/audio?id=/etc/passwd", "/api/audio?id=%2Fetc%2Fpasswd", "/api/similar?id=../clip000",
                   "/static/../../../../etc/passwd", "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
                   "/static/..%2F..%2Fweb%2Fsearch_app.py", "/%2e%2e/%2e%2e/etc/passwd", "/../../etc/passwd",
                   "/static//etc/passwd", "/api/audio?path=/etc/passwd"]:
        status, body = raw_get(server.port, target)
        assert status in (400, 404) and b"root:" not in body, target
        assert json.loads(body)["status"] == status, target
    status, _, body = request(url + "/api/search?q=x", b"{}", method="POST")
    assert status == 405 and json.loads(body)["status"] == 405
    assert server.proc.poll() is None and get_json(url + "/api/health")[0] == 200
