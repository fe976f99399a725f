"""What the search app and the study app share: JSON errors, the package's pages, byte ranges, the server.

Every error leaves as JSON `{"error": message, "status": code}`: a bad request is the client's (4xx,
the message says what to change), anything else is logged with its traceback and answered 500, and
the server keeps running either way. Pages and scripts come from the package (duetmc/resources/web)
by a fixed list of names, never by a path taken from the request.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from duetmc.errors import DuetmcError, UsageError
from duetmc.web.segments import MEDIA_TYPE, SegmentError

log = logging.getLogger("duetmc.web")

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".html": "text/html; charset=utf-8"}
AUDIO_CACHE_CONTROL = "private, max-age=86400"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ApiError(Exception):
    """A request the app refuses: `status` and a one-line message for the JSON body."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 304:
        return Response(status_code=304, headers=exc.headers)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def _duetmc_error(request: Request, exc: DuetmcError) -> JSONResponse:
    if isinstance(exc, SegmentError):  # the index's file is gone or broken: the server's problem
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(500, str(exc))
    return error_response(400, " ".join(str(exc).split()))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


EXCEPTION_HANDLERS = {ApiError: _api_error, HTTPException: _http_error, DuetmcError: _duetmc_error,
                      Exception: _internal_error}


WEB_DIR = Path(__file__).resolve().parent.parent / "resources" / "web"


def resource(name: str) -> str:
    """A page file shipped in duetmc/resources/web (callers pass only fixed names)."""
    return (WEB_DIR / name).read_text(encoding="utf-8")


def static_response(name: str, allowed: frozenset[str]) -> Response:
    """One of the package's page files by name; anything not in `allowed` is a 404."""
    if name not in allowed:
        raise ApiError(404, f"no such file: {name!r}")
    media = STATIC_TYPES[name[name.rfind("."):]]
    return Response(resource(name), media_type=media, headers={"Cache-Control": "no-cache"})


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name}={raw[:40]!r} is not a whole number; give {lo}..{hi}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name}={value} is out of range; give {lo}..{hi}")
    return value


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a `Range` header asks for, or None for the whole body.

    Only one range is honoured; several ranges or another unit get the whole body (RFC 9110 allows
    ignoring Range). A range that starts past the end is refused with 416."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise ApiError(416, f"range {header!r} asks for no bytes", {"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or end < start:
        raise ApiError(416, f"range {header!r} is outside the {size}-byte body",
                       {"Content-Range": f"bytes */{size}"})
    return start, end


def audio_response(request: Request, data: bytes, tag: str) -> Response:
    """`data` with caching headers, a 304 for a matching ETag, or a 206 for a byte range."""
    headers = {"ETag": tag, "Cache-Control": AUDIO_CACHE_CONTROL, "Accept-Ranges": "bytes"}
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    rng = parse_range(request.headers.get("range"), len(data))
    if rng is None:
        return Response(data, media_type=MEDIA_TYPE, headers=headers)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return Response(data[start:end + 1], status_code=206, media_type=MEDIA_TYPE, headers=headers)


def check_host(host: str) -> str | None:
    """A warning when `host` is reachable from other machines, else None."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"warning: listening on {host}: anyone who can reach this machine can use the app and hear the "
            f"audio; there is no login. Use --host 127.0.0.1 unless you mean it.")


def serve_app(app, host: str, port: int, banner: list[str]) -> None:
    """Run `app` under uvicorn until interrupted, after printing `banner` and any host warning."""
    import uvicorn

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port; give 1..65535")
    warning = check_host(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    for line in banner:
        print(line, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
