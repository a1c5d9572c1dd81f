"""The public announcement: write the static site atomically, then tell the CMS by webhook.

When people cannot be told one by one, the privacy policy promises an announcement. The
worker decides when; this channel makes it public. It is not a per-recipient ``Channel``:
it takes one ``Publication`` (every file of the site, from ``worker.announce.site.SiteBuilder``) and
returns one ``PublishReceipt``.

The site folder (``HERALD_ANNOUNCEMENTS_DIR``):

* Every file goes to a temporary file in its own folder, is flushed and fsynced, and is then
  ``os.replace``-d over its name, so a reader sees the old file or the new one, never half of
  one; the folders are fsynced afterwards so the renames survive a crash.
* An exclusive ``flock`` on ``<dir>/.lock`` is held for the whole write: two processes
  publishing at once never interleave their files.
* Pages and feeds are written before the index files that link to them. Files whose bytes
  are already there are left alone (publishing again writes nothing), and no page is ever
  deleted: an announcement's URL stays valid.

The webhook (``HERALD_ANNOUNCEMENT_WEBHOOK_URL``) is POSTed after the site is written, with
an ``Idempotency-Key`` of ``<announcement_id>:<revision>`` and, when a secret is set, an
``X-Herald-Signature: sha256=<hex HMAC of the body>``. Failures are mapped in one place,
``map_webhook_error``::

    DeliveryError
    ├── TransientDeliveryError   the site could not be written (errno name); the webhook timed
    │                            out, could not connect, or answered 408, 429 or 5xx after a
    │                            few quick tries: raised, so the worker publishes again later
    └── PermanentDeliveryError   the webhook refused (other 4xx, a redirect): returned in the
                                 receipt, not raised, because the site is public anyway

Publishing again is always safe: unchanged files are not rewritten and the CMS sees the
same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from worker.announce.site import rfc3339
from worker.config import Settings
from worker.core.clock import utcnow
from worker.core.errors import ConfigurationError, DeliveryError, PermanentDeliveryError, TransientDeliveryError

#: The lock file in the site folder; it is never deleted (that would let two writers in).
LOCK_NAME = ".lock"
#: Tries of one webhook call inside one publish.
WEBHOOK_TRIES = 3
#: Statuses after which the same request may succeed later.
RETRYABLE_STATUSES = frozenset({408, 429})
#: Permissions of a published file: the web server must be able to read it.
FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class Publication:
    """One publication of an announcement: the whole site, and what the webhook says about it."""

    announcement_id: str
    revision: int
    event_id: str
    url: str
    title: str
    status: str | None
    files: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class PublishReceipt:
    """What publishing did: files replaced (unchanged ones are not), and how the webhook answered."""

    files_written: int
    webhook_status: int | None
    webhook_error: DeliveryError | None


def map_webhook_error(failure: int | BaseException) -> DeliveryError:
    """Translate a webhook's non-2xx status, or an httpx or network exception, into herald's errors.

    408, 429 and 5xx, timeouts and connection failures are transient; any other status is
    permanent. Messages never carry the URL (it may hold a token) or the response body.

    Raises:
        ValueError: ``failure`` is a 2xx status, which is no failure.
    """
    if isinstance(failure, int):
        if 200 <= failure < 300:
            raise ValueError(f"HTTP {failure} is a success, not a webhook failure")
        code = f"http-{failure}"
        if failure in RETRYABLE_STATUSES or failure >= 500:
            return TransientDeliveryError(f"announcement webhook answered HTTP {failure}", code=code)
        if 300 <= failure < 400:
            return PermanentDeliveryError(
                f"announcement webhook answered HTTP {failure}; redirects are not followed", code=code
            )
        return PermanentDeliveryError(f"announcement webhook refused the publication (HTTP {failure})", code=code)
    if isinstance(failure, DeliveryError):
        return failure
    if isinstance(failure, httpx.TimeoutException | asyncio.TimeoutError | TimeoutError):
        return TransientDeliveryError("announcement webhook did not answer in time", code="timeout")
    if isinstance(failure, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return PermanentDeliveryError("announcement webhook URL cannot be used", code="invalid-url")
    if isinstance(failure, httpx.TransportError | OSError):
        return TransientDeliveryError(
            f"cannot reach the announcement webhook: {type(failure).__name__}", code="connection"
        )
    return TransientDeliveryError(
        f"unexpected error calling the announcement webhook: {type(failure).__name__}", code="unknown"
    )


def map_os_error(exc: OSError, action: str) -> TransientDeliveryError:
    """An OSError while writing the site, as a transient error coded by its errno name."""
    code = errno.errorcode.get(exc.errno, "EIO") if exc.errno is not None else "EIO"
    reason = os.strerror(exc.errno) if exc.errno is not None else type(exc).__name__
    return TransientDeliveryError(f"announcement site could not be written ({action}): {reason}", code=code)


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Herald-Signature`` value for ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class AnnouncementChannel:
    """Publishes the public announcement: the static site, then the CMS webhook.

    Raises:
        ConfigurationError: the webhook URL is set but is not an absolute http(s) URL.
    """

    name: ClassVar[str] = "announcement"

    def __init__(self, settings: Settings, *, retry_initial_s: float = 0.2, retry_max_s: float = 2.0) -> None:
        self._directory = settings.resolved_announcements_dir
        self._webhook_url = settings.announcement_webhook_url.strip()
        self._secret = settings.announcement_webhook_secret.get_secret_value().encode("utf-8")
        self._timeout_s = settings.announcement_webhook_timeout_s
        if self._webhook_url:
            try:
                parsed = httpx.URL(self._webhook_url)
            except httpx.InvalidURL:
                parsed = None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
                raise ConfigurationError("HERALD_ANNOUNCEMENT_WEBHOOK_URL must be an absolute http(s) URL")
        self._wait = wait_exponential(multiplier=retry_initial_s, max=retry_max_s) + wait_random(0, retry_initial_s)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def directory(self) -> Path:
        """The folder the site is written to."""
        return self._directory

    async def publish(self, publication: Publication) -> PublishReceipt:
        """Write the site, then call the webhook; safe to repeat (idempotent).

        Raises:
            TransientDeliveryError: the site could not be written, or the webhook failed in a
                way that a later try may fix.
            ValueError: a file path would land outside the site folder.
        """
        written = await asyncio.to_thread(write_site, self._directory, publication.files)
        if not self._webhook_url:
            return PublishReceipt(files_written=written, webhook_status=None, webhook_error=None)
        status, error = await self._notify(publication)
        return PublishReceipt(files_written=written, webhook_status=status, webhook_error=error)

    async def aclose(self) -> None:
        """Close the webhook's HTTP client; the channel is not used afterwards."""
        client, self._client = self._client, None
        if client is not None and self._loop is _running_loop():
            await client.aclose()
        self._loop = None

    # --- the webhook --------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """The client of the running loop; httpx's connections belong to the loop that opened them."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client of a loop that is gone cannot be closed from here; it is dropped.
            self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False, trust_env=False)
            self._loop = loop
        return self._client

    async def _notify(self, publication: Publication) -> tuple[int, PermanentDeliveryError | None]:
        body = webhook_body(publication)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{publication.announcement_id}:{publication.revision}",
            "User-Agent": "herald-announcements",
        }
        if self._secret:
            headers["X-Herald-Signature"] = signature(self._secret, body)
        client = self._http()
        status = 0
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(WEBHOOK_TRIES),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, DeliveryError) and exc.transient),
            reraise=True,
        ):
            with attempt:
                status = await self._post(client, body, headers)
        if 200 <= status < 300:
            return status, None
        error = map_webhook_error(status)
        if isinstance(error, PermanentDeliveryError):
            return status, error
        raise error  # not reached: _post raises every transient status

    async def _post(self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> int:
        """One POST; its status when it is a success or a permanent refusal.

        Raises:
            TransientDeliveryError: a status or failure that a later try may fix.
        """
        try:
            response = await client.post(self._webhook_url, content=body, headers=headers)
        except Exception as exc:  # mapped right here, at the edge
            raise map_webhook_error(exc) from None
        status = response.status_code
        if 200 <= status < 300:
            return status
        error = map_webhook_error(status)
        if error.transient:
            raise error
        return status


def webhook_body(publication: Publication) -> bytes:
    """The JSON the webhook receives; the signature covers exactly these bytes."""
    payload: dict[str, Any] = {
        "announcement_id": publication.announcement_id,
        "revision": publication.revision,
        "event_id": publication.event_id,
        "url": publication.url,
        "title": publication.title,
        "status": publication.status,
        "published_at": rfc3339(utcnow()),
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


# --- the site folder ---------------------------------------------------------------------


def write_site(directory: Path, files: Mapping[str, bytes]) -> int:
    """Write every file into ``directory`` atomically, under the folder's lock; returns how many
    were replaced (files already holding the same bytes are left alone).

    Raises:
        TransientDeliveryError: an OSError, coded by its errno name (e.g. ``ENOSPC``).
        ValueError: a path is absolute, climbs out with ``..``, or names a hidden file.
    """
    ordered = sorted(files, key=_write_order)
    targets = [(directory.joinpath(*_checked_parts(path)), files[path]) for path in ordered]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise map_os_error(exc, "creating the folder") from None
    written = 0
    folders: dict[Path, None] = {directory: None}
    try:
        with _locked(directory / LOCK_NAME):
            for target, data in targets:
                folders[target.parent] = None
                if _holds(target, data):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _replace_atomically(target, data)
                written += 1
            for folder in folders:
                _fsync_directory(folder)
    except OSError as exc:
        raise map_os_error(exc, "writing files") from None
    return written


def _write_order(path: str) -> tuple[int, str]:
    """Pages first, then feeds, then each language's index, then the root index."""
    pure = PurePosixPath(path)
    if pure.name == "index.html":
        return (3 if len(pure.parts) == 1 else 2), path
    if pure.suffix in (".atom", ".json", ".xml"):
        return 1, path
    return 0, path


def _checked_parts(path: str) -> tuple[str, ...]:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"announcement file path {path!r} must be relative, without '..' or hidden names")
    if "\\" in path or "\x00" in path:
        raise ValueError(f"announcement file path {path!r} has a forbidden character")
    return parts


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``: other publishers (threads or processes) wait."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holds(target: Path, data: bytes) -> bool:
    """Whether ``target`` is a regular file with exactly ``data`` in it already."""
    try:
        if not target.is_file() or target.stat().st_size != len(data):
            return False
        return target.read_bytes() == data
    except OSError:
        return False


def _replace_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file beside ``target``, fsync it, and rename it over ``target``.

    Raises:
        OSError: anything failed; the temporary file is gone again.
    """
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, FILE_MODE)  # mkstemp makes it private; the web server must read it
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def _fsync_directory(folder: Path) -> None:
    """Make the renames in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
