"""Private I/O helpers: atomic writes (a kill at any moment leaves the old file or the new one), the JSON rule."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["write_atomic", "json_safe", "json_text"]


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a kill at any moment leaves the old file or the new one: a temporary
    ``.NAME.tmp-PID`` in the same folder (created with the usual permissions, 0666 less the umask), flushed to disk,
    renamed over ``path``, the folder synced. An ``OSError`` (disk full, permission lost) leaves the old file and
    no temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def json_safe(value):
    """A JSON-safe copy of ``value``, the one rule every result and file of the package follows: a non-finite float
    (a standard error of one sample, a diverged figure) becomes ``None`` (JSON ``null``, which every reader accepts,
    where ``json.dumps`` would write ``NaN``); dicts, lists and tuples are copied element by element; ``None``,
    booleans, integers, finite floats and strings stay; anything else (a tensor, a path, a table) is recorded as its
    ``str``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def json_text(data) -> str:
    """``data`` as indented, valid JSON under the `json_safe` rule."""
    return json.dumps(json_safe(data), indent=2)
