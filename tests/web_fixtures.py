"""A real `duetmc serve` / `duetmc study serve` process on a free localhost port, and headless Chromium.

The browser is Debian's `chromium` driven by Playwright (never a downloaded browser). Without it the
tests fail, never skip, and say which packages to install.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DUETMC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
INSTALL = "sudo apt-get install -y chromium  (and `.venv/bin/pip install playwright`; never `playwright install`)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A duetmc server subprocess; `url` is its base address once it answers."""

    def __init__(self, args: list[str], ready_path: str, log: Path, timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "duetmc", *args, "--port", str(self.port)],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                get(self.url + ready_path)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout:.0f} s:\n{log.read_text()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body bytes) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get(url: str, headers: dict | None = None):
    return request(url, headers=headers)


def get_json(url: str, headers: dict | None = None):
    status, _, body = get(url, headers)
    return status, json.loads(body)


def post_json(url: str, obj, headers: dict | None = None):
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    status, _, body = request(url, data, {"Content-Type": "application/json", **(headers or {})}, "POST")
    return status, json.loads(body)


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET with the request target sent byte for byte (no client-side normalisation of `..`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}; install it: {INSTALL}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is missing; install it: {INSTALL}", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """Save a screenshot to $DUETMC_SCREENSHOTS (the README's docs/img) or the test's temp dir."""
    folder = Path(os.environ.get("DUETMC_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def build_indexes(root: Path, n_items: int = 40) -> dict[str, Path]:
    """Two indexes over one small signal cache (tiny-audio + MiniLM): a trained run's ("duetmc") and
    an untrained one's ("untrained"), so that a study has two systems that disagree."""
    from train_fixtures import build_signal_cache

    from duetmc.catalog import build_index
    from duetmc.pairs import resolve_spec
    from duetmc.pretrained import DuetModel
    from duetmc.train import TrainConfig, train

    cache = build_signal_cache(root, n_items=n_items, views=2)
    out = {}
    for name, epochs in (("duetmc", 4), ("untrained", 0)):
        run = root / f"run-{name}"
        train(TrainConfig(data=[resolve_spec(cache)], out=str(run), epochs=epochs, batch_size=16, warmup_epochs=1,
                          patience=100, progress=False, plots=False, keep_epoch_checkpoints=False))
        model = DuetModel.from_run(run, progress=False)
        build_index(model, root / f"{name}.idx", cache=cache)
        out[name] = root / f"{name}.idx"
    return out


@pytest.fixture(scope="session")
def web_indexes(tmp_path_factory):
    return build_indexes(tmp_path_factory.mktemp("webindex"))
