"""Writing WebDataset shards: deterministic tar files, size limits, manifests (written and
found again), URL expansion."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .remote import DEFAULT_READ_TIMEOUT, fetch_url, is_http

log = logging.getLogger(__name__)

__all__ = [
    "ShardWriter", "KEY_RE", "check_key", "brace_pattern", "write_manifest", "load_manifest",
    "expand_shard_urls",
]

#: Sample keys are names, never paths: letters, digits, ``_`` and ``-`` only (no dot - the
#: WebDataset key ends at the first dot of the member name - and no slash).
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid sample name, else raise ``ValueError``."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValueError(f"key: expected letters, digits, '_' or '-' only, got {key!r}")
    return key


class ShardWriter:
    """Write samples into ``<out_dir>/<prefix>-%06d.tar`` shards, starting a new shard after
    ``maxcount`` samples or ``maxsize`` bytes.

    Members are written with a fixed mtime, owner and mode so that the same samples give
    byte-identical shards. Each shard is written under a temporary name and renamed when
    complete, so a crashed run never leaves a truncated ``.tar`` behind.

    Args:
        out_dir: Output folder (created).
        prefix: Shard name prefix, e.g. the split name.
        maxcount: Samples per shard at most.
        maxsize: Bytes per shard at most (a single larger sample still gets its own shard).
        start_index: Index of the first shard.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str, maxcount: int = 1000,
                 maxsize: int = 1 << 30, start_index: int = 0) -> None:
        if maxcount < 1:
            raise ValueError(f"maxcount: expected >= 1, got {maxcount}")
        if maxsize < 1:
            raise ValueError(f"maxsize: expected >= 1, got {maxsize}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.index = start_index
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._size = 0

    def shard_path(self, index: int) -> Path:
        """Path of shard number ``index``."""
        return self.out_dir / f"{self.prefix}-{index:06d}.tar"

    def _open(self) -> None:
        self._tmp = self.shard_path(self.index).with_suffix(".tar.tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count = 0
        self._size = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = self.shard_path(self.index)
        os.replace(self._tmp, final)
        self.shards.append({"name": final.name, "count": self._count})
        self.index += 1
        self._tar = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps an extension (``"cls"``, ``"json"``, ...) to bytes."""
        check_key(key)
        size = sum(len(v) + 512 for v in members.values())
        if self._tar is not None and (self._count >= self.maxcount
                                      or (self._count and self._size + size > self.maxsize)):
            self._close()
        if self._tar is None:
            self._open()
        for ext, data in members.items():
            if not isinstance(data, bytes | bytearray):
                raise ValueError(f"members[{ext!r}]: expected bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = "dyreg"
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._size += size

    def close(self) -> list[dict[str, Any]]:
        """Finish the current shard; returns ``[{"name", "count"}, ...]`` of all shards."""
        self._close()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None
            return
        self.close()


def brace_pattern(folder: str | os.PathLike, names: Sequence[str]) -> str:
    """A brace pattern ``<folder>/<prefix>-{000000..000009}.tar`` for consecutive shard names."""
    if not names:
        raise ValueError("names: expected at least one shard name, got none")
    folder = Path(folder)
    if len(names) == 1:
        return str(folder / names[0])
    first, last = names[0], names[-1]
    m0 = re.match(r"^(.*)-(\d+)\.tar$", first)
    m1 = re.match(r"^(.*)-(\d+)\.tar$", last)
    if not (m0 and m1 and m0.group(1) == m1.group(1)):
        raise ValueError(f"names: expected '<prefix>-NNNNNN.tar' names, got {first!r}..{last!r}")
    return str(folder / f"{m0.group(1)}-{{{m0.group(2)}..{m1.group(2)}}}.tar")


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as indented JSON (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False))
    os.replace(tmp, path)


#: HTTP statuses that mean "no manifest there": 404 and 410, and 403, which S3-style object
#: stores answer for a missing key when listing the bucket is not allowed.
_MANIFEST_MISSING = (403, 404, 410)
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def load_manifest(urls: str | os.PathLike | Iterable[str | os.PathLike] | None,
                  timeout: float = DEFAULT_READ_TIMEOUT) -> dict[str, Any] | None:
    """The manifest written next to the shards ``urls`` (see :func:`write_manifest`), or
    ``None`` when there is none: the callers decide what a missing manifest means.

    ``urls`` has the shapes :func:`expand_shard_urls` takes (a brace pattern, several joined
    by ``::``, a list, a local folder, a shard's path or URL); the shards need not exist (a
    moved run's data simply has no manifest). The first shard is the first brace expansion
    of the first pattern (of a local folder: its first ``*.tar``, sorted). Next to it,
    ``<prefix>-manifest.json`` (``prefix``: the shard's name up to its first ``-``, e.g.
    ``train`` for ``train-000000.tar``), else ``manifest.json``, is read:

    * local paths and ``file://``: from the shard's folder (a folder without ``.tar``
      shards: its ``manifest.json``);
    * ``http(s)://``: from the same folder on the server, with
      :func:`~dyreg_pyg.data.remote.fetch_url` (connection and reads bounded by ``timeout``
      seconds, retries on 408/429/5xx); HTTP 404, 410 and 403 (what S3-style stores answer
      for a missing key) mean "not there";
    * ``pipe:`` commands and other URL schemes: ``None`` (a command has no folder next to
      it); nothing given (``None``, ``""``, an empty list): ``None``.

    A manifest that exists but is corrupt is an error, never ignored.

    Raises:
        ValueError: the manifest is not valid JSON (garbage, truncated, empty, not UTF-8) or
            is JSON but not an object; the message names the file or URL and says that a
            JSON object was expected. Also a malformed brace pattern or a ``timeout`` that
            is not a positive number (HTTP).
        OSError: the manifest exists but cannot be read (permissions, I/O error), or the
            HTTP server cannot be reached, answers another error status, stalls for
            ``timeout`` seconds or cuts the body.
    """
    first = _first_shard(urls)
    if first is None:
        return None
    if is_http(first):
        folder, _, shard = first.partition("?")[0].partition("#")[0].rpartition("/")
        for name in _manifest_names(shard):
            url = f"{folder}/{name}"
            data = fetch_url(url, timeout, missing=_MANIFEST_MISSING)
            if data is not None:
                return _parse_manifest(data, url)
        return None
    if _is_remote(first):
        return None
    path = Path(first[len("file://"):] if first.startswith("file://") else first)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        folder, shard = path, shards[0].name if shards else ""
    else:
        folder, shard = path.parent, path.name
    for name in _manifest_names(shard):
        cand = folder / name
        if cand.is_file():
            return _parse_manifest(cand.read_bytes(), str(cand))
    return None


def _first_shard(urls: str | os.PathLike | Iterable[str | os.PathLike] | None) -> str | None:
    """The first shard of ``urls`` (unchecked), ``None`` when nothing is given."""
    import braceexpand

    if urls is None:
        return None
    items = str(urls).split("::") if isinstance(urls, str | os.PathLike) else \
        [str(u) for u in urls]
    for item in items:
        if item.strip():
            return next(iter(braceexpand.braceexpand(item.strip())))
    return None


def _manifest_names(shard: str) -> list[str]:
    """Manifest file names to try next to the shard named ``shard``, in order."""
    prefix = shard.split("-")[0]
    return [f"{prefix}-manifest.json", "manifest.json"] if prefix else ["manifest.json"]


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """The JSON object in ``data`` (read from ``where``); ``ValueError`` naming ``where``."""
    try:
        value = json.loads(data)
    except ValueError as exn:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"manifest {where}: expected a JSON object, got invalid JSON "
                         f"({exn})") from None
    if not isinstance(value, dict):
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        raise ValueError(f"manifest {where}: expected a JSON object, got a JSON {kind}")
    return value


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://", url)) \
        and not url.startswith("file://")


def expand_shard_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expand shard URLs to a list: brace patterns (``a-{000..009}.tar``), several patterns
    joined by ``::``, a list of them, a local folder (all ``*.tar`` in it, sorted), local files,
    or ``pipe:`` commands / URLs (not checked).

    Raises:
        ValueError: nothing given, nothing matched, or a local shard does not exist.
    """
    import braceexpand

    if isinstance(urls, str | os.PathLike):
        items = str(urls).split("::")
    else:
        items = [str(u) for u in urls]
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        for url in braceexpand.braceexpand(item):
            if _is_remote(url):
                out.append(url)
                continue
            path = url[len("file://"):] if url.startswith("file://") else url
            if os.path.isdir(path):
                found = sorted(str(p) for p in Path(path).glob("*.tar"))
                if not found:
                    raise ValueError(f"urls: folder {path!r} contains no .tar shards")
                out.extend(found)
            else:
                out.append(path)
    if not out:
        raise ValueError(f"urls: expected at least one shard, got {urls!r} (nothing matched)")
    missing = [u for u in out if not _is_remote(u) and not os.path.exists(u)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"urls: {len(missing)} of {len(out)} shards do not exist, e.g. "
                         f"{missing[:3]}{more}")
    return out
