"""Files published whole: written beside their final name, then renamed over it, so a reader (or a
rerun after a kill) never sees half a file. Names are unique per process and thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from duetmc.errors import naming_file


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file in the same folder; it then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with naming_file(str(path)):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
