"""The listening-study app: a participant page, the answers API, and an admin view behind a token.

A participant starts on `/` (instructions, consent, an optional participant id), gets a secret link
`/s/<token>` and judges up to 24 trials there; a reload or a reopened link resumes at the first
unanswered trial. Every participant API call carries that token and only ever sees its own trials
and answers; audio is asked for by (trial, side) of one's own trials, never by file. The admin view
(`/admin?token=...`) shows progress per participant and needs the admin token printed at startup.
SQLite calls run on the event loop's thread, one at a time, so the connection is never shared
between threads mid-transaction.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from duetmc import study
from duetmc.web.http import EXCEPTION_HANDLERS, ApiError, audio_response, resource, static_response
from duetmc.web.segments import DEFAULT_CACHE_BYTES, Segment, SegmentCache

STATIC = frozenset({"study.js", "admin.js", "style.css"})
MAX_BODY = 4096


def _html(name: str) -> Response:
    return Response(resource(name), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is {len(raw)} bytes; answers are under {MAX_BODY}")
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not JSON; send an object like {\"trial\": 1, \"choice\": \"A\"}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _token(request: Request) -> str:
    token = request.query_params.get("t") or request.headers.get("x-study-token", "")
    if not token:
        raise ApiError(401, "no participant token; open your personal study link")
    return token


def _trial(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ApiError(400, f"trial {str(value)[:20]!r} is not a trial number")
    return int(value)


def _answer_error(exc: study.StudyError) -> ApiError:
    status = 404 if isinstance(exc, study.NotFoundError) else 409 if isinstance(exc, study.AnsweredError) else 400
    return ApiError(status, str(exc))


def _participant_routes(db: sqlite3.Connection, meta: dict, segments: SegmentCache) -> list[Route]:
    def guarded(fn, *args):
        try:
            return fn(db, *args)
        except study.StudyError as exc:
            raise _answer_error(exc) from None

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"title": meta.get("title", "Listening study"),
                             "per_participant": meta.get("per_participant", study.DEFAULT_PER_PARTICIPANT)})

    async def join(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if body.get("consent") is not True:
            raise ApiError(400, "consent is needed to take part: tick the consent box")
        label = body.get("participant", "")
        if not isinstance(label, str):
            raise ApiError(400, "participant id must be text")
        per = int(meta.get("per_participant", study.DEFAULT_PER_PARTICIPANT))
        return JSONResponse(study.add_participant(db, label, per, int(meta.get("seed", 0))), status_code=201)

    async def mine(request: Request) -> JSONResponse:
        return JSONResponse(guarded(study.progress, _token(request)))

    async def answer(request: Request) -> JSONResponse:
        body = await _json_body(request)
        token = body.get("token") or _token(request)
        if not isinstance(token, str):
            raise ApiError(400, "token must be text")
        choice = body.get("choice")
        if not isinstance(choice, str):
            raise ApiError(400, f"choice must be one of {', '.join(study.CHOICES)}")
        return JSONResponse(guarded(study.record_answer, token, _trial(body.get("trial")), choice))

    async def audio(request: Request) -> Response:
        q = request.query_params
        path, start, end = guarded(study.trial_clip, _token(request), _trial(q.get("trial", "")), q.get("side", ""))
        data, tag = await asyncio.to_thread(segments.get, Segment(path, start, end))
        return audio_response(request, data, tag)

    return [Route("/api/info", info), Route("/api/participants", join, methods=["POST"]), Route("/api/me", mine),
            Route("/api/answer", answer, methods=["POST"]), Route("/api/audio", audio)]


def _admin_routes(db: sqlite3.Connection, admin_token: str) -> list[Route]:
    async def admin_page(request: Request) -> Response:
        return _html("admin.html")

    async def admin_progress(request: Request) -> JSONResponse:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not given or not secrets.compare_digest(given.encode(), admin_token.encode()):
            raise ApiError(403, "the admin view needs the admin token printed when the server started")
        return JSONResponse(study.admin_progress(db))

    return [Route("/admin", admin_page), Route("/api/admin/progress", admin_progress)]


def make_app(db: sqlite3.Connection, admin_token: str, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Starlette:
    if not admin_token:
        raise ValueError("make_app needs a non-empty admin token")

    async def start_page(request: Request) -> Response:
        return _html("study.html")

    async def static(request: Request) -> Response:
        return static_response(request.path_params["name"], STATIC)

    routes = [Route("/", start_page), Route("/s/{token}", start_page), Route("/static/{name}", static),
              *_participant_routes(db, study.read_meta(db), SegmentCache(cache_bytes)), *_admin_routes(db, admin_token)]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
