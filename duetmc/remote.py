"""Reading a cache from a web server: a read-only Zarr store over HTTP(S) that works with any server.

Zarr reads a shard's index and chunks as byte ranges. Static servers that ignore `Range` (Python's
`http.server`, for one) answer 200 with the whole file, which fsspec returns as if it were the range:
the shard index then fails its CRC. Here a 200 answer to a range request is cut to the range locally,
so such servers are correct (if slower); servers that honour ranges answer 206 and nothing changes.
"""

from __future__ import annotations


def http_store(url: str):
    """A read-only zarr FsspecStore for an http(s) URL. Needs aiohttp (`duetmc[http]`)."""
    from fsspec.implementations.http import HTTPFileSystem
    from zarr.storage import FsspecStore

    class RangeSafeHTTPFileSystem(HTTPFileSystem):
        async def _cat_file(self, url, start=None, end=None, **kwargs):
            if start is None and end is None:
                return await super()._cat_file(url, **kwargs)
            if start == end:
                return b""
            kw = {**self.kwargs, **kwargs}
            kw["headers"] = {**kw.get("headers", {}), "Range": await self._process_limits(url, start, end)}
            session = await self.set_session()
            async with session.get(self.encode_url(url), **kw) as r:
                self._raise_not_found_for_status(r, url)
                out = await r.read()
                return out if r.status == 206 else out[slice(start, end)]

    import aiohttp  # noqa: F401  (fail here, as ImportError, when the http extra is missing)

    return FsspecStore(fs=RangeSafeHTTPFileSystem(asynchronous=True), path=url, read_only=True)
