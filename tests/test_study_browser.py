"""The listening study in a real browser against a real `duetmc study serve`, plus its API's bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import soundfile as sf
from audio_fixtures import tone, write_audio
from web_fixtures import Server, browser, get, get_json, post_json, raw_get, screenshot  # noqa: F401

from duetmc import study
from duetmc.study import Clip, Prompt
from duetmc.study_report import report

ADMIN = "admin-secret-token"


@pytest.fixture(scope="module")
def study_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    files = [write_audio(root / f"c{i}.wav", tone(2.0, 16000, freq=200.0 + 40 * i), 16000) for i in range(8)]
    prompts = [Prompt(f"a tone number {i}", "tones" if i % 2 else "hums", f"c{i}") for i in range(4)]
    top1 = {"duetmc": [Clip("duetmc", f"c{i}", str(files[i]), 0.5, 1.5) for i in range(4)],
            "clap": [Clip("clap", f"c{i + 4}", str(files[i + 4])) for i in range(4)]}
    truth = [Clip(study.TRUTH, f"c{(i + 1) % 4}", str(files[(i + 1) % 4])) for i in range(4)]
    trials = study.plan_trials(prompts, top1, truth, 100, seed=1)
    path = study.write_study(root / "study.sqlite", trials,
                             {"systems": ["clap", "duetmc"], "seed": 1, "per_participant": 6})
    server = Server(["study", "serve", str(path), "--admin-token", ADMIN], "/api/info", root / "server.log")
    yield server, path
    server.stop()


def _play_both_and_choose(page, choice: str) -> None:
    page.wait_for_selector("#trial:not([hidden])")
    page.evaluate("document.querySelectorAll('audio').forEach(a => a.play())")
    page.wait_for_function("!document.querySelector('.choices button').disabled")
    page.click(f".choices button[data-choice='{choice}']")


@pytest.mark.slow
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
        if i == 3:  # a closed tab or refresh resumes at the first unanswered trial
            page.reload()
            page.wait_for_function("document.getElementById('count').textContent.startsWith('Trial 4 ')")
        _play_both_and_choose(page, choice)
    page.wait_for_selector("#done:not([hidden])")
    # a resent answer (double click, retry) is accepted once and never counted twice
    me = get_json(f"{server.url}/api/me?t={token}")[1]
    first = me["trials"][0]
    again = post_json(server.url + "/api/answer", {"token": token, "trial": first["trial"], "choice": first["answer"]})
    assert again == (200, {"trial": first["trial"], "answer": first["answer"]})
    assert [t["answer"] for t in me["trials"]] == given
    # the served clip is the recorded segment and decodes
    status, headers, body = get(f"{server.url}/api/audio?t={token}&trial={first['trial']}&side=A")
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert sf.read(io.BytesIO(body))[0].shape[0] in (16000, 32000)

    admin = browser.new_page(viewport={"width": 1000, "height": 500})
    admin.goto(f"{server.url}/admin?token={ADMIN}")
    admin.wait_for_selector("#rows tr")
    assert "tester-1" in admin.inner_text("#rows") and "6" in admin.inner_text("#rows")
    screenshot(admin, "study-admin.png", tmp_path)
    admin.goto(f"{server.url}/admin?token={token}")  # a participant's token is not the admin's
    admin.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "admin token" in admin.inner_text("#error") and admin.inner_text("#rows") == ""

    result = report(path)
    mine = [r for r in result["pairs"] if r["dataset"] == "all"]
    assert result["judgements"] == 6 and sum(r["judgements"] for r in mine) == 6
    assert sum(r["tie"] for r in mine) == given.count("tie")
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
