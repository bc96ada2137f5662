"""Reading shards without hangs: stall timeouts and retries for streamed shards, tar expansion that
names the shard in every error and reports shards that gave no sample, and loader workers that die
with the process that started them.

- :class:`ShardOpener` opens a shard URL. ``http://``/``https://`` shards are read with urllib and
  ``pipe:`` shards through a subprocess, both with a stall timeout (``read_timeout`` seconds without a
  single byte) and ``retries`` retries with back-off on transient failures (connection refused or
  reset, HTTP 5xx/408/429, a stall, a failed command). A retry reconnects and continues at the byte
  where the failed read stopped (an HTTP ``Range`` request, or reading and dropping the bytes already
  read), so the tar stream downstream sees each byte once and no sample is yielded twice, while a
  shard is never held in memory. Local files and other schemes open as webdataset opens them.
- :class:`TarSamples` is the pipeline stage ``{"url"} -> samples`` (webdataset's
  ``tarfile_to_samples`` with this opener): a shard's samples, grouped by key within the shard; an
  error names the shard (and the last member read) and goes to ``on_error``; a shard read to its end
  without a sample goes to ``on_empty``.
- :class:`ExitWithParent` is a DataLoader ``worker_init_fn`` that makes a worker die with its parent.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import http.client
import os
import re
import select
import signal
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Protocol

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys

from ir_lightning.errors import DataError

PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal the calling process gets when its parent thread dies."""

PIPE_SIGPIPE_STATUS = 141
"""Exit status a shell reports for a command killed by SIGPIPE (128 + 13): the reader stopped early."""

RETRY_BACKOFF_S = 1.0
"""Wait before the first retry of a shard read; it doubles with every further retry."""

MAX_BACKOFF_S = 30.0
"""Longest wait between two tries of a shard read."""

TRANSIENT_HTTP_STATUS = frozenset({408, 429})
"""HTTP statuses below 500 that are worth retrying (request timeout, too many requests)."""

WEBDATASET_META = re.compile(r"__[^/]*__($|/)")
"""Tar members webdataset reads as metadata, not sample members (``tar_file_iterator``'s ``skip_meta``)."""

READ_CHUNK = 1 << 16
"""Bytes asked of a pipe per read when the caller asks for everything."""


class ShardReadError(DataError, OSError):
    """A shard could not be read (named in the message): unreachable, stalled, truncated, not a tar.
    ``unreachable``: its bytes could not be fetched at all, retries included (not a broken tar)."""

    url: str | None = None
    unreachable = False


class Stream(Protocol):
    """What the tar reader needs of an open shard."""

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once (before a fork: a child of a threaded process should not dlopen)."""
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel SIGKILL this process when its parent dies, and exit at once if the
    parent (``parent_pid``, recorded before the fork or spawn) is already gone. A no-op elsewhere.

    The kernel sends the signal when the parent *thread* that started this process ends, so start
    workers from a thread that lives as long as they should (the main thread, as Lightning does).
    """
    if not sys.platform.startswith("linux"):
        return
    if _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


class ExitWithParent:
    """DataLoader ``worker_init_fn``: the worker dies with the process that built the loader (see
    :func:`die_with_parent`), then runs ``then(worker_id)`` if given. Build it in the parent process:
    it records the parent's pid there."""

    def __init__(self, then: Callable[[int], None] | None = None) -> None:
        self.parent_pid, self.then = os.getpid(), then

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent_pid)
        if self.then is not None:
            self.then(worker_id)


# ---------------------------------------------------------------- streamed shards


class PipeStream:
    """The stdout of ``command`` (run by the shell in a process group of its own), read with a stall
    timeout: a read that sees no byte for ``timeout`` seconds kills the group and raises TimeoutError;
    a command that ends with a failing status raises OSError. The shell dies with this process."""

    def __init__(self, command: str, timeout: float) -> None:
        self.command, self.timeout = command, timeout
        if sys.platform.startswith("linux"):
            _libc()  # loaded here, in this process, not in the forked child
        self.process = subprocess.Popen(
            command,
            shell=True,
            stdout=subprocess.PIPE,  # noqa: S602 - pipe: is a command
            start_new_session=True,  # a group of its own: close() kills all it starts
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        self.fd = self.process.stdout.fileno()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_CHUNK), b""))
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            self.close()
            raise TimeoutError(f"no byte for {self.timeout} s")
        data = os.read(self.fd, size)
        if not data:
            status = self.process.wait()
            if status not in (0, PIPE_SIGPIPE_STATUS):
                raise OSError(f"the command exited with status {status}")
        return data

    def close(self) -> None:
        """Kill the command (and what it started) if it still runs; reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process.stdout.close()


def _skip_bytes(stream: Stream, count: int) -> None:
    """Read and drop the first ``count`` bytes of ``stream`` (a retry that restarts from the beginning)."""
    while count > 0:
        data = stream.read(min(count, READ_CHUNK))
        if not data:
            raise EOFError(f"the shard ended after {count} fewer bytes than the failed read had seen")
        count -= len(data)


class HTTPStream:
    """An HTTP response body that raises IncompleteRead when the connection ends before the promised
    Content-Length (``HTTPResponse.read(n)`` then returns ``b""`` as if the body had ended)."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response

    def read(self, size: int = -1) -> bytes:
        data = self.response.read(None if size is None or size < 0 else size)
        if not data and size != 0 and self.response.length:
            raise http.client.IncompleteRead(b"", self.response.length)
        return data

    def close(self) -> None:
        self.response.close()


def open_http(url: str, offset: int, timeout: float) -> Stream:
    """``url`` from byte ``offset`` on (a ``Range`` request; bytes dropped if the server ignores it);
    ``timeout`` bounds the connection and every read (a stall raises TimeoutError). Credentials in the
    URL (``https://user:password@host/...``, as curl took them) are sent as HTTP basic authentication."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)  # noqa: S310
    stream = HTTPStream(response)
    if offset and response.status != http.HTTPStatus.PARTIAL_CONTENT:
        _skip_bytes(stream, offset)
    return stream


def open_pipe(url: str, offset: int, timeout: float) -> Stream:
    """The output of the ``pipe:`` command from byte ``offset`` on (earlier bytes read and dropped)."""
    stream = PipeStream(url[len("pipe:") :], timeout)
    _skip_bytes(stream, offset)
    return stream


def is_transient(error: BaseException) -> bool:
    """Failures a retry may cure: timeouts, refused or reset connections, HTTP 5xx/408/429, a server that
    hung up, a pipe command that stalled or failed. Not: HTTP 4xx, certificate errors."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in TRANSIENT_HTTP_STATUS
    if isinstance(error, urllib.error.URLError):
        return not isinstance(error.reason, ssl.SSLError)
    return isinstance(error, (OSError, EOFError, http.client.HTTPException))


def describe(error: BaseException, timeout: float) -> str:
    """A short account of a failed read."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, TimeoutError):
        return f"no byte for {timeout} s (data.read_timeout)"
    return f"{type(error).__name__}: {error}"


class RetryingStream:
    """A streamed shard that reconnects on transient failures and continues where the failed read
    stopped, so its reader sees every byte once. ``connect(url, offset, timeout)`` opens the shard at
    byte ``offset``; at most ``retries`` failures are retried per shard, after waits of 1, 2, 4, ... s."""

    def __init__(self, url: str, connect: Callable[[str, int, float], Stream], timeout: float, retries: int) -> None:
        self.url, self.connect, self.timeout, self.retries = url, connect, timeout, retries
        self.position, self.failures = 0, 0
        self.stream: Stream | None = None

    def __str__(self) -> str:
        return self.url

    def read(self, size: int = -1) -> bytes:
        while True:
            try:
                if self.stream is None:
                    self.stream = self.connect(self.url, self.position, self.timeout)
                data = self.stream.read(size)
            except Exception as error:  # noqa: BLE001 - sorted into transient and fatal below
                self.close()
                self._wait_or_raise(error)
                continue
            self.position += len(data)
            return data

    def _wait_or_raise(self, error: Exception) -> None:
        if not is_transient(error) or self.failures >= self.retries:
            tries = f"after {self.failures + 1} tries (data.retries: {self.retries})"
            tries = tries if self.failures else "(not retried)"
            failure = ShardReadError(
                f"shard {self.url!r}: {describe(error, self.timeout)} at byte {self.position} {tries}"
            )
            failure.url, failure.unreachable = self.url, True
            raise failure from error
        self.failures += 1
        time.sleep(min(RETRY_BACKOFF_S * 2 ** (self.failures - 1), MAX_BACKOFF_S))

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()


class ShardOpener:
    """Opens a shard URL: ``http(s)://`` and ``pipe:`` as :class:`RetryingStream` (stall timeout
    ``read_timeout`` seconds, ``retries`` retries), anything else as webdataset's ``gopen``."""

    CONNECTORS: dict[str, Callable[[str, int, float], Stream]] = {
        "http://": open_http,
        "https://": open_http,
        "pipe:": open_pipe,
    }

    def __init__(self, read_timeout: float, retries: int) -> None:
        self.read_timeout, self.retries = read_timeout, retries

    def __call__(self, url: str) -> Stream:
        for prefix, connect in self.CONNECTORS.items():
            if url.startswith(prefix):
                return RetryingStream(url, connect, self.read_timeout, self.retries)
        return gopen(url)


# ---------------------------------------------------------------- tar shards to samples


class ShardMembers:
    """Reads the members of one shard as webdataset's ``{fname, data, __url__}`` dicts, as webdataset's
    ``tar_file_iterator`` does, but knowing which member broke; remembers the last member read."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last: str | None = None

    def read(self, stream: Stream, report: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
        """The members in order. A member whose data breaks off ends the shard: if it starts a new key,
        the break is ``report``-ed and iteration ends, so the sample before it (complete) is kept;
        if it belongs to the sample being read, the error is raised, so that sample is dropped."""
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            if not info.isreg() or WEBDATASET_META.match(info.name):
                continue
            try:
                data = tar.extractfile(info).read()
            except Exception as error:
                broken = self.error(error, at=info.name)
                if self.last is not None and base_plus_ext(info.name)[0] == base_plus_ext(self.last)[0]:
                    raise broken from error
                report(broken)
                return
            self.last = info.name
            yield {"fname": info.name, "data": data, "__url__": self.url}
            tar.members = []  # stream mode: keep no index of what was read

    def error(self, error: Exception, at: str | None = None) -> ShardReadError:
        """``error`` as a one-line ShardReadError naming the shard and the member where it broke (``at``)
        or the last member read."""
        if isinstance(error, ShardReadError):
            return error
        where = f" at member {at!r}" if at else f" after member {self.last!r}" if self.last else ""
        wrapped = ShardReadError(" ".join(f"shard {self.url!r}{where}: {type(error).__name__}: {error}".split()))
        wrapped.__cause__ = error
        return wrapped


class _Stopped(Exception):
    """Carries what ``on_error`` raised out through webdataset's handlers, which would catch it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class TarSamples:
    """Pipeline stage: ``{"url": ...}`` dicts -> webdataset samples (``__key__``, ``__url__``, members),
    grouped by key within each shard.

    ``on_error(error)`` gets every failure (opening, reading, parsing, a duplicate member) as a
    :class:`ShardReadError` naming the shard; what it raises stops the stream, and when it returns the
    stream goes on (with the shard's next member, or the next shard when this one cannot be read
    further). ``on_empty(url)`` hears of a shard read to its end without a single sample.
    """

    def __init__(
        self,
        opener: Callable[[str], Stream],
        on_error: Callable[[Exception], Any],
        on_empty: Callable[[str], Any] | None = None,
    ) -> None:
        self.opener, self.on_error, self.on_empty = opener, on_error, on_empty

    def __call__(self, sources: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        for source in sources:
            members = ShardMembers(source["url"])
            try:
                count = yield from self._samples(members)
            except _Stopped as stopped:
                raise stopped.error from stopped.error.__cause__
            if count == 0 and self.on_empty is not None:
                self.on_empty(members.url)

    def _samples(self, members: ShardMembers) -> Generator[dict[str, Any], None, int | None]:
        """Yield one shard's samples; return how many, or None when the shard failed (and was reported)."""
        report, count = functools.partial(self._report, members), 0
        try:
            stream = self.opener(members.url)
            try:
                for sample in group_by_keys(members.read(stream, report), handler=report):
                    count += 1
                    yield sample
            finally:
                stream.close()
        except _Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - on_error decides: raise, or go on with the next shard
            report(error)
            return None
        return count

    def _report(self, members: ShardMembers, error: Exception) -> bool:
        """Hand ``error`` (named) to ``on_error``; True = go on (webdataset's handler contract)."""
        try:
            self.on_error(members.error(error))
        except Exception as stop:  # noqa: BLE001 - carried out and re-raised as it is by __call__
            raise _Stopped(stop) from None
        return True
