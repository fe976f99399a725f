"""Who may write a cache: checking it before any work starts, and creating files a lab group can share.

A cache is often owned by someone else (a lab's shared MERT features). Writing into one the user cannot
write must fail before an encoder is loaded, with one line that names the path and suggests an
overlay. Files are created group-readable whatever the user's umask, and with `group_writable`
group-writable too, with the set-group-id bit on directories so new files keep the cache's group.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from duetmc.cache_spec import CacheError, is_remote
from duetmc.errors import PathError


def _overlay_hint(url: str) -> str:
    return (f"to add features to a cache you cannot write, make your own overlay of it: "
            f"`duetmc cache overlay MINE.zarr --base {url}` and featurize with --cache MINE.zarr")


def _unwritable(d: Path) -> str | None:
    """Why `d` cannot take new files, or None. os.access also sees read-only mounts and `chattr +i`."""
    if not os.access(d, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        if os.statvfs(d).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return None


def ensure_writable(url: str, modality: str | None = None) -> None:
    """Raise a one-line error now if featurizing into `url` could not write (before any model loads).

    Checks the cache folder, its `modality` folder when present, and for a new cache the nearest
    existing parent. HTTP caches are read-only; other remote stores are checked when written.
    """
    url = str(url)
    if url.startswith(("http://", "https://")):
        raise CacheError(f"{url}: a cache served over HTTP is read-only; {_overlay_hint(url)}")
    if is_remote(url):
        return
    path = Path(url.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise PathError(f"{path}: is a file, not a cache folder; give --cache a folder (new or a cache)")
    targets = [path] if path.exists() else [next(p for p in path.parents if p.exists())]
    if path.exists():
        targets += [path / m for m in (modality,) if m and (path / m).is_dir()]
    for t in targets:
        why = _unwritable(t)
        if why:
            fix = _overlay_hint(url) if path.exists() else "choose a --cache under a folder you can write"
            raise PathError(f"{t}: cannot write ({why}); {fix}")


@contextlib.contextmanager
def shared_files(group_writable: bool = False, path: str | None = None):
    """Create files group-readable (and with `group_writable`, group-writable) while inside.

    The umask is process-wide, so this belongs around a whole command, not inside library threads.
    With `group_writable` and a local `path`, its folders get the set-group-id bit (new files keep
    the cache's group) and group write.
    """
    clear = 0o070 if group_writable else 0o050  # group read (+x for folders), and write if asked
    old = os.umask(0)
    os.umask(old & ~clear)
    try:
        yield
    finally:
        os.umask(old)
        if group_writable and path and not is_remote(path):
            share_with_group(Path(path.removeprefix("file://")))


def share_with_group(root: Path) -> None:
    """g+rw on every file and g+rwxs on every folder under `root` that this user owns."""
    if not root.exists():
        return
    me = os.getuid()
    for dirpath, dirnames, filenames in os.walk(root):
        for name, is_dir in [(dirpath, True)] + [(os.path.join(dirpath, f), False) for f in filenames]:
            st = os.lstat(name)
            if st.st_uid != me or stat.S_ISLNK(st.st_mode):
                continue
            extra = stat.S_IRWXG | stat.S_ISGID if is_dir else stat.S_IRGRP | stat.S_IWGRP
            if st.st_mode & extra != extra:
                try:
                    os.chmod(name, st.st_mode | extra)
                except PermissionError as exc:
                    raise PathError(f"{name}: cannot make it group-writable ({exc.strerror}); "
                                    "ask its owner to run `chmod -R g+rwX` on the cache") from None
