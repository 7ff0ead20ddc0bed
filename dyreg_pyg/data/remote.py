"""Shards from HTTP(S) servers and ``pipe:`` commands (object stores), with bounded time-outs.

:func:`open_shard` is what the loader's tar stage reads from:

* ``http://`` / ``https://``: opened here with :mod:`urllib` (no ``curl`` needed; proxies
  from the usual ``http_proxy`` / ``no_proxy`` variables). The connection and every read are
  bounded by ``timeout`` seconds; a body shorter than its ``Content-Length`` (the server
  dropped the connection) is an error, as is any HTTP error status. Opening is retried
  :data:`OPEN_RETRIES` times on a connection failure or a 408/429/5xx status (not on 404);
  a stream cut mid-shard is not resumed: the loader counts the shard's remaining samples as
  ``shard_error`` and goes on.
* ``pipe:CMD``: ``CMD`` runs in a shell (its own process group) and the shard is its
  standard output, e.g. ``pipe:aws s3 cp s3://bucket/train-000000.tar -``, ``pipe:s5cmd cat
  s3://...``, ``pipe:gcloud storage cat gs://...``. A command that delivers no byte for
  ``timeout`` seconds is killed; one that exits with a non-zero status is an error whose
  message holds the tail of its standard error.
* local paths and ``file://``: plain files; anything else goes to ``webdataset.gopen``.

:func:`fetch_url` reads a whole small HTTP(S) file (the shards' manifest, see
:func:`dyreg_pyg.data.shards.load_manifest`) the same way.

Every failure is an :class:`OSError` (a stall: :class:`ShardStalledError`), which the loader
records as a ``shard_error`` under the shard's URL. Nothing is decoded here: the stream is
bytes for :mod:`tarfile`.
"""

from __future__ import annotations

import http.client
import logging
import os
import select
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["open_shard", "fetch_url", "ShardStalledError", "DEFAULT_READ_TIMEOUT",
           "OPEN_RETRIES", "is_http"]

#: Seconds a remote shard may go without delivering a byte (and the HTTP connect time-out).
DEFAULT_READ_TIMEOUT = 60.0
#: Extra attempts to open an HTTP shard after a connection failure or a 408/429/5xx status.
OPEN_RETRIES = 2
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_BACKOFF = 1.0  # seconds before the first retry; doubles


class ShardStalledError(OSError):
    """A remote shard delivered no byte for the read time-out. An ``OSError`` but not a
    ``TimeoutError``: the loader counts it as a shard error (it lets ``TimeoutError``, which
    stops a reader from outside, propagate)."""


class _HTTPStatusError(OSError):
    """An HTTP error status that is not retried, or still there after the retries."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"HTTP {code} {reason}")
        self.code = code


def is_http(url: str) -> bool:
    """Whether ``url`` is an ``http://`` or ``https://`` URL."""
    return url.startswith(("http://", "https://"))


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"read_timeout: expected a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def open_shard(url: str, timeout: float = DEFAULT_READ_TIMEOUT) -> Any:
    """A binary stream (``read(n)``, ``close()``) of the shard ``url``; see the module doc.

    Raises:
        OSError: the shard cannot be opened (missing file, HTTP error, connection refused, a
            command that cannot start).
        ValueError: ``timeout`` is not a positive number.
    """
    timeout = _check_timeout(timeout)
    if is_http(url):
        return _HTTPStream(url, timeout)
    if url.startswith("pipe:"):
        return _PipeStream(url, timeout)
    if "://" not in url:
        return open(url, "rb")
    if url.startswith("file://"):
        return open(url[len("file://"):], "rb")
    from webdataset.gopen import gopen

    return gopen(url, "rb")


# ---------------------------------------------------------------------------------- HTTP
def _urlopen(url: str, timeout: float, retries: int = OPEN_RETRIES) -> Any:
    """``urllib.request.urlopen`` with ``timeout`` and retries on transient failures."""
    delay = _BACKOFF
    for attempt in range(retries + 1):
        try:
            return urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exn:
            exn.close()
            if exn.code not in _RETRY_STATUS or attempt == retries:
                raise _HTTPStatusError(exn.code, exn.reason) from None
            why = f"HTTP {exn.code}"
        except urllib.error.URLError as exn:
            if attempt == retries:
                raise OSError(f"cannot connect: {exn.reason}") from exn
            why = str(exn.reason)
        except (TimeoutError, http.client.HTTPException) as exn:
            if attempt == retries:
                raise ShardStalledError(f"no response in {timeout:g} s (read_timeout)"
                                        if isinstance(exn, TimeoutError) else
                                        f"bad response: {exn!r}") from exn
            why = repr(exn)
        log.warning("shard %s: %s; retrying in %.0f s (%d/%d)", url, why, delay,
                    attempt + 1, retries)
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


class _HTTPStream:
    """The body of an HTTP response; a read that waits ``timeout`` seconds for a byte, an
    early end (fewer bytes than ``Content-Length``) or a broken chunked body raises."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.resp = _urlopen(url, timeout)
        length = self.resp.headers.get("Content-Length")
        self.length = int(length) if length and length.isdigit() else None
        self.got = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.resp.read(n if n is not None and n >= 0 else None)
        except TimeoutError as exn:
            raise ShardStalledError(
                f"no data for {self.timeout:g} s after {self.got} bytes (read_timeout)"
            ) from exn
        except http.client.IncompleteRead as exn:
            raise OSError(f"connection closed after {self.got + len(exn.partial)} bytes "
                          "(incomplete chunked body)") from exn
        except http.client.HTTPException as exn:
            raise OSError(f"bad response after {self.got} bytes: {exn!r}") from exn
        self.got += len(data)
        if not data and n != 0 and self.length is not None and self.got < self.length:
            raise OSError(f"connection closed after {self.got} of {self.length} bytes")
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.resp.close()


# ---------------------------------------------------------------------------------- pipe:
class _PipeStream:
    """Standard output of a shell command; a read that waits ``timeout`` seconds for a byte
    kills the command (its whole process group) and raises :class:`ShardStalledError`; a
    non-zero exit raises ``OSError`` with the tail of its standard error."""

    def __init__(self, url: str, timeout: float) -> None:
        self.cmd = url[len("pipe:"):].strip()
        if not self.cmd:
            raise OSError("pipe: no command given")
        self.timeout = timeout
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, shell=True, stdout=subprocess.PIPE,
                                     stderr=self.err, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.fd = self.proc.stdout.fileno()
        self.got = 0
        self.eof = False
        self.closed = False

    def _stderr(self) -> str:
        self.err.seek(0)
        lines = self.err.read()[-2000:].decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def read(self, n: int = -1) -> bytes:
        if self.eof:
            return b""
        chunks: list[bytes] = []
        want = n if n is not None and n >= 0 else None
        while want is None or sum(map(len, chunks)) < want:
            ready, _, _ = select.select([self.fd], [], [], self.timeout)
            if not ready:
                self._kill()
                raise ShardStalledError(f"command {self.cmd!r} gave no data for "
                                        f"{self.timeout:g} s after {self.got} bytes "
                                        "(read_timeout)")
            size = 1 << 20 if want is None else want - sum(map(len, chunks))
            data = os.read(self.fd, size)
            if not data:
                self.eof = True
                self._finish()
                break
            self.got += len(data)
            chunks.append(data)
            if want is not None:
                break  # a short read is fine: tarfile asks again
        return b"".join(chunks)

    def _finish(self) -> None:
        try:
            status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise ShardStalledError(f"command {self.cmd!r} closed its output but did not exit "
                                    f"in {self.timeout:g} s") from None
        if status != 0:
            raise OSError(f"command {self.cmd!r} exited with status {status} after "
                          f"{self.got} bytes: {self._stderr() or 'no error output'}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proc.poll() is None:  # read stopped early (or the command hangs): stop it
            self._kill()
        self.proc.stdout.close()
        self.err.close()


# ---------------------------------------------------------------------------------- small files
def fetch_url(url: str, timeout: float = DEFAULT_READ_TIMEOUT,
              missing: Collection[int] = (404, 410)) -> bytes | None:
    """The whole body of the HTTP(S) file ``url`` (a small one: a manifest), read like a
    shard: the connection and every read bounded by ``timeout`` seconds, :data:`OPEN_RETRIES`
    retries on a connection failure or a 408/429/5xx status, a body cut short is an error.

    Returns:
        The body; ``None`` when the server answers a status in ``missing`` (the file is not
        there).

    Raises:
        OSError: (message starting with ``url``) the server cannot be reached, answers another
            error status, delivers no byte for ``timeout`` seconds or cuts the body.
        ValueError: ``timeout`` is not a positive number.
    """
    try:
        stream = _HTTPStream(url, _check_timeout(timeout))
    except _HTTPStatusError as exn:
        if exn.code in missing:
            return None
        raise OSError(f"{url}: {exn}") from None
    except OSError as exn:
        raise OSError(f"{url}: {exn}") from exn
    try:
        return stream.read()
    except OSError as exn:
        raise OSError(f"{url}: {exn}") from exn
    finally:
        stream.close()
