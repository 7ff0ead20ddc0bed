"""Atomic file writes shared by the library and the training code."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], None], *,
                 binary: bool = True, sync_dir: bool = False) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, fsync it and rename it to
    ``path``: a reader (or a crash at any point) sees the old file or the new one, never a
    partial one. ``sync_dir`` also fsyncs the folder, so that the rename itself survives a
    power loss. The temporary file is removed if ``write`` raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if sync_dir:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
