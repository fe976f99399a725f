"""The listening study in a real browser against a real `duetmc study serve`, plus its API's bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import soundfile as sf
from web_fixtures import Server, browser, get, get_json, post_json, raw_get, screenshot, web_indexes  # noqa: F401

from duetmc import study
from duetmc.study_report import report

pytestmark = pytest.mark.slow  # needs the two small indexes (a featurized cache, two runs)
ADMIN = "admin-secret-token"


@pytest.fixture(scope="module")
def study_server(web_indexes, tmp_path_factory):  # noqa: F811
    """`duetmc study create` over two real indexes, then a real `duetmc study serve`."""
    from click.testing import CliRunner

    from duetmc.cli import main
    from duetmc.index import Index

    root = tmp_path_factory.mktemp("study")
    path = root / "study.sqlite"
    cache = Index.load(web_indexes["duetmc"]).meta["source"]["cache"]
    res = CliRunner().invoke(main, ["study", "create", "--index", f"duetmc={web_indexes['duetmc']}", "--index",
                                    f"untrained={web_indexes['untrained']}", "--ground-truth", "--from-cache", cache,
                                    "--split", "test", "--trials", "12", "--per-participant", "6", "--seed", "1",
                                    "--out", str(path)])
    assert res.exit_code == 0, res.output
    server = Server(["study", "serve", str(path), "--admin-token", ADMIN], "/api/info", root / "server.log")
    yield server, path
    server.stop()


def _play_both_and_choose(page, choice: str) -> None:
    page.wait_for_selector("#trial:not([hidden])")
    page.evaluate("document.querySelectorAll('audio').forEach(a => a.play())")
    page.wait_for_function("!document.querySelector('.choices button').disabled")
    page.click(f".choices button[data-choice='{choice}']")


def test_participant_completes_six_trials_with_a_reload(study_server, browser, tmp_path):  # noqa: F811
    server, path = study_server
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    page.goto(server.url + "/")
    page.fill("#label", "tester-1")
    screenshot(page, "study-welcome.png", tmp_path)
    assert page.is_disabled("#start")  # no consent, no start
    page.check("#consent")
    page.click("#start")
    page.wait_for_url("**/s/*")
    token = page.url.rsplit("/s/", 1)[1]
    given = ["A", "B", "tie", "A", "tie", "B"]
    for i, choice in enumerate(given):
        page.wait_for_function(f"document.getElementById('count').textContent.startsWith('Trial {i + 1} ')")
        if i == 0:
            screenshot(page, "study-trial.png", tmp_path)
        if i == 3:  # a refresh resumes at the first unanswered trial
            page.reload()
            page.wait_for_function("document.getElementById('count').textContent.startsWith('Trial 4 ')")
        if i == 4:  # so does a closed tab: the study's first page offers this browser's unfinished link
            page.goto(server.url + "/")
            page.click("#resumeLink")
            page.wait_for_function("document.getElementById('count').textContent.startsWith('Trial 5 ')")
        _play_both_and_choose(page, choice)
    page.wait_for_selector("#done:not([hidden])")
    page.goto(server.url + "/")  # finished: the next person on this computer starts afresh
    page.wait_for_selector("#welcome:not([hidden])")
    assert page.is_hidden("#resume")
    # a resent answer (double click, retry) is accepted once and never counted twice
    me = get_json(f"{server.url}/api/me?t={token}")[1]
    first = me["trials"][0]
    again = post_json(server.url + "/api/answer", {"token": token, "trial": first["trial"], "choice": first["answer"]})
    assert again == (200, {"trial": first["trial"], "answer": first["answer"]})
    assert [t["answer"] for t in me["trials"]] == given
    # the served clip is the recorded segment and decodes
    status, headers, body = get(f"{server.url}/api/audio?t={token}&trial={first['trial']}&side=A")
    assert status == 200 and headers["content-type"] == "audio/wav"
    audio, start, end = study.trial_clip(study.connect(path), token, first["trial"], "A")
    data, sr = sf.read(io.BytesIO(body))
    assert data.shape[0] == round((end - start) * sr) and sr == sf.info(audio).samplerate

    admin = browser.new_page(viewport={"width": 1000, "height": 500})
    admin.goto(f"{server.url}/admin?token={ADMIN}")
    admin.wait_for_selector("#rows tr")
    assert "tester-1" in admin.inner_text("#rows") and "6" in admin.inner_text("#rows")
    screenshot(admin, "study-admin.png", tmp_path)
    admin.goto(f"{server.url}/admin?token={token}")  # a participant's token is not the admin's
    admin.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "admin token" in admin.inner_text("#error") and admin.inner_text("#rows") == ""

    result = report(path)
    expected = {}  # (first system, second system) -> [win, tie, loss] from the answers given and the recorded sides
    db = study.connect(path)
    for t, choice in zip(me["trials"], given):
        row = db.execute("SELECT system_a, system_b FROM trials WHERE id = ?", (t["trial"],)).fetchone()
        a, b = row["system_a"], row["system_b"]
        first, second = sorted([a, b], key=lambda s: (s == study.TRUTH, s))
        counts = expected.setdefault((first, second), [0, 0, 0])
        counts[1 if choice == "tie" else 0 if (a if choice == "A" else b) == first else 2] += 1
    db.close()
    got = {(r["system"], r["versus"]): [r["win"], r["tie"], r["loss"]] for r in result["pairs"] if r["dataset"] == "all"}
    assert result["judgements"] == 6 and got == expected
    out = subprocess.run([sys.executable, "-m", "duetmc", "study", "report", str(path), "--json",
                          "--csv", str(tmp_path / "a.csv"), "--plot", str(tmp_path / "p.png")],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["judgements"] == 6
    assert len((tmp_path / "a.csv").read_text().strip().splitlines()) == 7 and (tmp_path / "p.png").stat().st_size


def test_study_api_refuses_bad_input(study_server):
    server, _ = study_server
    url = server.url
    status, body = post_json(url + "/api/participants", {"participant": "x"})
    assert status == 400 and "consent" in body["error"] and body["status"] == 400
    status, me = post_json(url + "/api/participants", {"participant": "bob", "consent": True})
    assert status == 201
    token = me["token"]
    trial = get_json(f"{url}/api/me?t={token}")[1]["trials"][0]["trial"]
    cases = [(b"not json", 400), (b"[1, 2]", 400), ({"token": token, "trial": trial, "choice": "C"}, 400),
             ({"token": token, "trial": "1; DROP TABLE answers", "choice": "A"}, 400),
             ({"token": token, "trial": None, "choice": "A"}, 400), ({"token": token, "trial": trial}, 400),
             ({"token": token, "trial": 99999, "choice": "A"}, 404), ({"token": "nope", "trial": trial, "choice": "A"}, 404),
             ({"trial": trial, "choice": "A"}, 401), (b"x" * 5000, 413)]
    for payload, expected in cases:
        status, body = post_json(url + "/api/answer", payload)
        assert (status, body["status"]) == (expected, expected), (payload, body)
    assert post_json(url + "/api/answer", {"token": token, "trial": trial, "choice": "A"})[0] == 200
    assert post_json(url + "/api/answer", {"token": token, "trial": trial, "choice": "B"})[0] == 409
    # nobody reads another's answers or the admin view
    assert get_json(f"{url}/api/me?t=not-a-token")[0] == 404
    assert get_json(f"{url}/api/admin/progress", {"Authorization": f"Bearer {token}"})[0] == 403
    assert get_json(f"{url}/api/admin/progress")[0] == 403
    assert get_json(f"{url}/api/admin/progress", {"Authorization": f"Bearer {ADMIN}"})[0] == 200
    for target in [f"/api/audio?t={token}&trial={trial}&side=../../etc/passwd",
                   f"/api/audio?t={token}&trial=..%2F..%2Fetc%2Fpasswd&side=A", "/static/..%2F..%2Fstudy.py",
                   "/static/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/%2e%2e%2fsetup.sh",
                   "/static//etc/passwd", "/s/../../etc/passwd", "/api/audio?path=/etc/passwd"]:
        status, body = raw_get(server.port, target)
        assert status in (400, 401, 404) and b"root:" not in body, target
        assert json.loads(body)["status"] == status
    assert server.proc.poll() is None  # still up
