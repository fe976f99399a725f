"""Locks that let several featurize processes share one local cache.

Zarr v3 has no cross-process locking and a sharded write rewrites the whole shard file, so two
writers of one shard lose each other's rows. Every writer therefore claims a shard before it reads
its done flags and holds the claim until the shard's rows are written and verified. Claims are
`flock`s on one small file per shard in `<cache>.locks/` next to the store (files inside the store
would make zarr warn about unknown objects); the kernel drops a claim when its process dies, even by
SIGKILL, so there are no stale claims to take over. Each claim file says who holds it (host, pid) for
messages. Remote stores (URLs) have no claims: give each process its own `--task I/N` there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from duetmc.errors import PathError


def local_root(cache: str) -> Path | None:
    """The cache's directory, or None for a remote store."""
    if "://" in cache and not cache.startswith("file://"):
        return None
    return Path(cache.removeprefix("file://"))


@contextlib.contextmanager
def plan_lock(cache: str):
    """Serialise planning between processes on a local cache (remote stores: plan once, up front)."""
    root = local_root(cache)
    if root is None:
        yield
        return
    if root.exists() and not root.is_dir():
        raise PathError(f"--cache {cache}: is a file, not a cache directory; give a new or existing cache folder")
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)  # lock the directory itself: no extra file inside the store
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class ShardClaims:
    """Per-shard claims of one group: `try_claim` (non-blocking), `claim` (waits), `release`."""

    def __init__(self, cache: str, group_path: str):
        root = local_root(cache)
        self.dir = None if root is None else root.with_name(root.name + ".locks") / group_path
        self.held: dict[int, int] = {}

    def _path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:06d}.lock"

    def holder(self, shard: int) -> str:
        with contextlib.suppress(OSError):
            return self._path(shard).read_text().strip() or "another process"
        return "another process"

    def try_claim(self, shard: int) -> bool:
        if self.dir is None or shard in self.held:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(shard), os.O_RDWR | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        self.held[shard] = fd
        return True

    def claim(self, shard: int, poll_s: float = 0.2) -> None:
        while not self.try_claim(shard):
            time.sleep(poll_s)

    def release(self, shard: int) -> None:
        fd = self.held.pop(shard, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    @contextlib.contextmanager
    def claimed(self, shards):
        """Hold claims on `shards` (waiting for each) for the duration of the block."""
        try:
            for s in sorted(set(shards)):
                self.claim(s)
            yield
        finally:
            for s in sorted(set(shards)):
                self.release(s)
