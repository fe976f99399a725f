"""The search app: a page to search an index by text, listen to the results, and find more like one.

The index (and with it the model's text encoder) loads once, when the app is made. Audio is asked for
by clip id and only ever read from the file and segment the index records for that id, so no request
can name a path. `/api/search` answers with the same function, and the same JSON, as
`duetmc index search --json`.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from duetmc.errors import DuetmcError
from duetmc.web.http import (EXCEPTION_HANDLERS, ApiError, audio_response, int_param, resource,
                             static_response)
from duetmc.web.segments import DEFAULT_CACHE_BYTES, Segment, SegmentCache

MAX_K = 1000
MAX_QUERY = 1000
STATIC = frozenset({"search.js", "style.css"})


class Catalog:
    """What the app needs from an index (duetmc.index.Index): text search, search by clip, segments."""

    def __init__(self, index):
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def describe(self) -> dict:
        return {"path": str(self.index.path), "clips": len(self.index), "model_id": self.index.model_id}

    def search(self, query: str, k: int) -> list[dict]:
        return self.index.search_text(query, k=k)

    def similar(self, clip_id: str, k: int) -> list[dict]:
        return self.index.search_like(clip_id, k=k)

    def known(self, clip_id: str) -> bool:
        try:
            self.index.entry(clip_id)
        except DuetmcError:
            return False
        return True

    def segment(self, clip_id: str) -> Segment:
        """The recorded file and segment of a clip the index holds (never a path from a request)."""
        e = self.index.entry(clip_id)
        return Segment(str(e["audio"]), e.get("start"), e.get("end"))


def _k(request: Request) -> int:
    """1..MAX_K; like `duetmc index search`, a k above the catalog's size returns the whole catalog."""
    return int_param(request, "k", 10, 1, MAX_K)


def _clip_id(request: Request, catalog: Catalog) -> str:
    clip_id = request.query_params.get("id", "")
    if not clip_id:
        raise ApiError(400, "give a clip id: ?id=...")
    if not catalog.known(clip_id):
        raise ApiError(404, f"no clip {clip_id[:80]!r} in this index")
    return clip_id


def make_app(catalog: Catalog, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Starlette:
    segments = SegmentCache(cache_bytes)

    async def page(request: Request) -> Response:
        return Response(resource("search.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    async def static(request: Request) -> Response:
        return static_response(request.path_params["name"], STATIC)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "clips": len(catalog), "index": catalog.describe()})

    async def search(request: Request) -> JSONResponse:
        query = request.query_params.get("q", "").strip()
        if not query:
            raise ApiError(400, "empty query: give some words to search for, e.g. ?q=calm+piano")
        if len(query) > MAX_QUERY:
            raise ApiError(400, f"query is {len(query)} characters long; keep it under {MAX_QUERY}")
        k = _k(request)
        results = await asyncio.to_thread(catalog.search, query, k)
        return JSONResponse({"query": query, "k": k, "results": results})

    async def similar(request: Request) -> JSONResponse:
        clip_id, k = _clip_id(request, catalog), _k(request)
        results = await asyncio.to_thread(catalog.similar, clip_id, k)
        return JSONResponse({"like": clip_id, "k": k, "results": results})

    async def audio(request: Request) -> Response:
        seg = catalog.segment(_clip_id(request, catalog))
        data, tag = await asyncio.to_thread(segments.get, seg)
        return audio_response(request, data, tag)

    routes = [Route("/", page), Route("/static/{name}", static), Route("/api/health", health),
              Route("/api/search", search), Route("/api/similar", similar), Route("/api/audio", audio)]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
