"""Publishing the announcement: the site folder changes atomically, and the CMS hears of it.

The folder is a real one under ``tmp_path``; the webhook is a real HTTP server (a small
Starlette app on uvicorn) that records what it receives and answers as each test scripts.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import incident, people

from channels.announcement import (
    LOCK_NAME,
    AnnouncementChannel,
    Publication,
    PublishReceipt,
    map_os_error,
    map_webhook_error,
)
from worker.announce.site import AnnouncementView, SiteBuilder, TimelineEntry, announcement_slug
from worker.config import Settings
from worker.core.errors import ConfigurationError, DeliveryError, PermanentDeliveryError, TransientDeliveryError
from worker.delivery.rendering import Renderer
from worker.intake.events import validate_event
from worker.service.serving import ServerThread, free_port

SECRET = "whsec-test-secret"
T0 = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)
T, P = TransientDeliveryError, PermanentDeliveryError


# --- helpers --------------------------------------------------------------------------------


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "announcements_dir": tmp_path / "site"}
    values.update(overrides)
    return Settings(**values)


def channel_for(settings: Settings) -> AnnouncementChannel:
    return AnnouncementChannel(settings, retry_initial_s=0.01, retry_max_s=0.05)


def publish(channel: AnnouncementChannel, publication: Publication) -> PublishReceipt:
    """One publish on a fresh event loop, as a worker thread does it."""

    async def run() -> PublishReceipt:
        try:
            return await channel.publish(publication)
        finally:
            await channel.aclose()

    return asyncio.run(run())


def publication(files: dict[str, bytes], revision: int = 1) -> Publication:
    return Publication(
        announcement_id="incident-inc-2026-0042",
        revision=revision,
        event_id=f"evt-{revision}",
        url="http://127.0.0.1:8080/announcements/en/incident-inc-2026-0042.html",
        title="Security incident: Credential stuffing against the sign-in page",
        status="identified",
        files=files,
    )


def synthetic_site(revision: int, size: int = 1_000) -> dict[str, bytes]:
    """A site whose every byte says which revision it belongs to."""
    paths = [
        "en/incident-inc-2026-0042.html",
        "zh-CN/incident-inc-2026-0042.html",
        "en/feed.atom",
        "en/feed.json",
        "zh-CN/feed.atom",
        "zh-CN/feed.json",
        "en/index.html",
        "zh-CN/index.html",
        "index.html",
    ]
    return {path: (f"{path} revision {revision}\n".encode() * (size // 40 + 1))[:size] for path in paths}


def real_site() -> dict[str, bytes]:
    """The site SiteBuilder builds for an incident announced in English and Chinese."""
    renderer = Renderer(Settings().templates_dir)
    event = validate_event(incident(people(1), incident_id="INC-2026-0042", status="investigating"))
    entry = TimelineEntry(
        event_id=event.event_id,
        status="investigating",
        posted_at=T0,
        content={loc: renderer.render(event, "announcement", loc) for loc in ("en", "zh-CN")},
    )
    view = AnnouncementView(announcement_slug("incident:INC-2026-0042"), "security_incident", T0, T0, 1, (entry,))
    site = SiteBuilder(renderer, locales=("en", "zh-CN"), base_url="http://127.0.0.1:8080/announcements")
    return site.build([view], generated_at=T0)


def on_disk(folder: Path) -> dict[str, bytes]:
    """Every published file under ``folder`` (the lock file aside), by relative path."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_NAME
    }


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".tmp")]


@dataclass
class Hook:
    """A CMS stand-in: records each request and answers with the next scripted status."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), await request.body()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else (self.statuses or [204])[0]
        return Response(status_code=status)


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    """A running webhook server and its URL."""
    recorder = Hook()
    app = Starlette(routes=[Route("/hooks/announcements", recorder.endpoint, methods=["POST"])])
    with ServerThread(app, port=free_port()) as server:
        yield recorder, f"{server.url}/hooks/announcements"


# --- the site folder ------------------------------------------------------------------------


def test_publishing_writes_every_file_with_its_exact_bytes(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    files = real_site()

    receipt = publish(channel_for(settings), publication(files))

    assert receipt == PublishReceipt(files_written=len(files), webhook_status=None, webhook_error=None)
    assert on_disk(settings.resolved_announcements_dir) == files
    for path in files:
        mode = (settings.resolved_announcements_dir / path).stat().st_mode & 0o777
        assert mode == 0o644, f"{path} must be readable by the web server"
    assert leftovers(tmp_path) == []


def test_publishing_again_replaces_what_changed_and_only_that(tmp_path: Path) -> None:
    """Given a published site, when a new revision changes some files, then exactly those are
    replaced (new inodes), the rest are untouched, and no temporary file is left."""
    settings = settings_for(tmp_path)
    folder = settings.resolved_announcements_dir
    channel = channel_for(settings)
    first = synthetic_site(1)
    publish(channel, publication(first))
    inodes = {path: (folder / path).stat().st_ino for path in first}

    second = {**first, "en/incident-inc-2026-0042.html": b"<p>changed</p>\n", "en/index.html": b"<p>index</p>\n"}
    receipt = publish(channel, publication(second, revision=2))

    assert receipt.files_written == 2
    assert on_disk(folder) == second
    for path in first:
        changed = path in ("en/incident-inc-2026-0042.html", "en/index.html")
        assert ((folder / path).stat().st_ino != inodes[path]) == changed, path
    assert leftovers(tmp_path) == []
    assert publish(channel, publication(second, revision=2)).files_written == 0  # again: nothing to do


def test_an_old_page_is_never_deleted(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    channel = channel_for(settings)
    publish(channel, publication({"en/old-announcement.html": b"old\n", "en/index.html": b"one\n"}))

    publish(channel, publication({"en/new-announcement.html": b"new\n", "en/index.html": b"two\n"}, revision=2))

    assert on_disk(settings.resolved_announcements_dir) == {
        "en/old-announcement.html": b"old\n",
        "en/new-announcement.html": b"new\n",
        "en/index.html": b"two\n",
    }


def test_two_publishers_at_once_never_mix_revisions(tmp_path: Path) -> None:
    """Given two workers publishing different revisions over and over at the same time, and a
    reader reading all along, then the reader never sees a partial file and the folder ends
    with every file of one revision."""
    settings = settings_for(tmp_path)
    folder = settings.resolved_announcements_dir
    sites = {rev: synthetic_site(rev, size=256 * 1024) for rev in (1, 2)}
    publish(channel_for(settings), publication(sites[1]))
    done = threading.Event()
    problems: list[str] = []

    def writer(revision: int) -> None:
        channel = channel_for(settings)  # one channel each, as two processes would have
        try:
            for _ in range(6):
                publish(channel, publication(sites[revision], revision=revision))
        except Exception as exc:  # reported below, with the reader's findings
            problems.append(f"writer {revision}: {exc!r}")

    def reader() -> None:
        while not done.is_set():
            for path in sites[1]:
                data = (folder / path).read_bytes()
                if data not in (sites[1][path], sites[2][path]):
                    problems.append(f"{path} read half-written ({len(data)} bytes)")

    threads = [threading.Thread(target=writer, args=(rev,)) for rev in (1, 2)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    watcher.join(timeout=30)

    assert problems == []
    final = on_disk(folder)
    assert final in (sites[1], sites[2]), "the folder holds files of both revisions"
    assert leftovers(tmp_path) == []


def test_a_publisher_waits_while_another_holds_the_folder_lock(tmp_path: Path) -> None:
    """Given another process holding ``.lock``, when we publish, then nothing is written
    until the lock is released."""
    settings = settings_for(tmp_path)
    folder = settings.resolved_announcements_dir
    folder.mkdir(parents=True)
    lock = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    receipts: list[PublishReceipt] = []
    publisher = threading.Thread(
        target=lambda: receipts.append(publish(channel_for(settings), publication({"a.html": b"a"})))
    )
    try:
        publisher.start()
        time.sleep(0.3)
        assert not (folder / "a.html").exists() and receipts == []
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    publisher.join(timeout=10)

    assert receipts and receipts[0].files_written == 1
    assert (folder / "a.html").read_bytes() == b"a"


def test_a_folder_that_cannot_be_created_gives_a_transient_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("a file where a folder should be")
    settings = settings_for(tmp_path, announcements_dir=tmp_path / "not-a-folder" / "site")

    with pytest.raises(TransientDeliveryError) as raised:
        publish(channel_for(settings), publication(synthetic_site(1)))

    assert raised.value.code == "ENOTDIR"
    assert "could not be written" in raised.value.message


def test_a_write_that_fails_midway_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Given a folder squatting on a page's name, when publishing fails there, then it fails
    transiently, and no temporary file is left beside the page."""
    settings = settings_for(tmp_path)
    folder = settings.resolved_announcements_dir
    (folder / "en" / "b.html" / "squatter").mkdir(parents=True)
    files = {"en/a.html": b"a", "en/b.html": b"b", "en/index.html": b"index"}

    with pytest.raises(TransientDeliveryError) as raised:
        publish(channel_for(settings), publication(files))

    assert raised.value.code == "EISDIR"
    assert leftovers(tmp_path) == []
    assert not (folder / "en" / "index.html").exists(), "the index must not link to a page that is not there"


@pytest.mark.parametrize("path", ["../escape.html", "/etc/passwd", "en/../../x.html", ".lock", "en/.hidden", ""])
def test_a_path_outside_the_site_is_refused_before_anything_is_written(tmp_path: Path, path: str) -> None:
    settings = settings_for(tmp_path)

    with pytest.raises(ValueError, match="must be relative"):
        publish(channel_for(settings), publication({"en/ok.html": b"ok", path: b"bad"}))

    assert not (settings.resolved_announcements_dir / "en" / "ok.html").exists()
    assert not (tmp_path / "escape.html").exists()


@pytest.mark.parametrize(
    ("number", "code"), [(errno.ENOSPC, "ENOSPC"), (errno.EACCES, "EACCES"), (errno.EROFS, "EROFS"), (None, "EIO")]
)
def test_an_os_error_becomes_a_transient_error_named_by_its_errno(number: int | None, code: str) -> None:
    exc = OSError(number, os.strerror(number)) if number is not None else OSError("odd")

    error = map_os_error(exc, "writing files")

    assert isinstance(error, TransientDeliveryError) and error.code == code


# --- the webhook ----------------------------------------------------------------------------


def test_the_webhook_receives_a_signed_keyed_description_of_the_publication(
    tmp_path: Path, hook: tuple[Hook, str]
) -> None:
    recorder, url = hook
    settings = settings_for(tmp_path, announcement_webhook_url=url, announcement_webhook_secret=SECRET)
    before = datetime.now(UTC).replace(microsecond=0)

    receipt = publish(channel_for(settings), publication(synthetic_site(3), revision=3))

    assert receipt == PublishReceipt(files_written=9, webhook_status=204, webhook_error=None)
    ((headers, body),) = recorder.requests
    sent = json.loads(body)
    assert sent == {
        "announcement_id": "incident-inc-2026-0042",
        "revision": 3,
        "event_id": "evt-3",
        "url": "http://127.0.0.1:8080/announcements/en/incident-inc-2026-0042.html",
        "title": "Security incident: Credential stuffing against the sign-in page",
        "status": "identified",
        "published_at": sent["published_at"],
    }
    published_at = datetime.fromisoformat(sent["published_at"])
    assert before <= published_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == "incident-inc-2026-0042:3"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-herald-signature"], expected)


def test_without_a_secret_the_webhook_is_not_signed(tmp_path: Path, hook: tuple[Hook, str]) -> None:
    recorder, url = hook
    settings = settings_for(tmp_path, announcement_webhook_url=url)

    publish(channel_for(settings), publication(synthetic_site(1)))

    ((headers, _body),) = recorder.requests
    assert "x-herald-signature" not in headers


def test_a_webhook_that_fails_twice_then_answers_succeeds_within_one_publish(
    tmp_path: Path, hook: tuple[Hook, str]
) -> None:
    recorder, url = hook
    recorder.statuses = [503, 503, 200]
    settings = settings_for(tmp_path, announcement_webhook_url=url, announcement_webhook_secret=SECRET)

    receipt = publish(channel_for(settings), publication(synthetic_site(1)))

    assert receipt.webhook_status == 200 and receipt.webhook_error is None
    assert len(recorder.requests) == 3
    assert len({body for _headers, body in recorder.requests}) == 1, "every try sends the same signed body"
    assert {headers["idempotency-key"] for headers, _body in recorder.requests} == {"incident-inc-2026-0042:1"}


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_webhook_that_keeps_failing_is_a_transient_error_after_three_tries(
    tmp_path: Path, hook: tuple[Hook, str], status: int
) -> None:
    """The site is public regardless; the worker publishes again later and only the webhook repeats."""
    recorder, url = hook
    recorder.statuses = [status]
    settings = settings_for(tmp_path, announcement_webhook_url=url)
    files = synthetic_site(1)

    with pytest.raises(TransientDeliveryError) as raised:
        publish(channel_for(settings), publication(files))

    assert raised.value.code == f"http-{status}"
    assert len(recorder.requests) == 3
    assert on_disk(settings.resolved_announcements_dir) == files


def test_a_webhook_refusal_is_returned_as_permanent_and_the_site_is_public(
    tmp_path: Path, hook: tuple[Hook, str]
) -> None:
    recorder, url = hook
    recorder.statuses = [400]
    settings = settings_for(tmp_path, announcement_webhook_url=url)
    files = synthetic_site(1)

    receipt = publish(channel_for(settings), publication(files))

    assert receipt.webhook_status == 400
    assert isinstance(receipt.webhook_error, PermanentDeliveryError)
    assert receipt.webhook_error.code == "http-400"
    assert len(recorder.requests) == 1, "a refusal is not retried"
    assert on_disk(settings.resolved_announcements_dir) == files


def test_a_webhook_nobody_listens_on_is_a_transient_connection_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, announcement_webhook_url=f"http://127.0.0.1:{free_port()}/hook")

    with pytest.raises(TransientDeliveryError) as raised:
        publish(channel_for(settings), publication(synthetic_site(1)))

    assert raised.value.code == "connection"
    assert "127.0.0.1" not in raised.value.message


def test_a_webhook_that_does_not_answer_in_time_is_a_transient_timeout(tmp_path: Path, hook: tuple[Hook, str]) -> None:
    recorder, url = hook
    recorder.delay_s = 1.0
    settings = settings_for(tmp_path, announcement_webhook_url=url, announcement_webhook_timeout_s=0.2)

    with pytest.raises(TransientDeliveryError) as raised:
        publish(channel_for(settings), publication(synthetic_site(1)))

    assert raised.value.code == "timeout"


def test_publishing_the_same_revision_again_is_harmless(tmp_path: Path, hook: tuple[Hook, str]) -> None:
    """A redelivered publication rewrites nothing and tells the CMS with the same key."""
    recorder, url = hook
    settings = settings_for(tmp_path, announcement_webhook_url=url)
    channel = channel_for(settings)
    first = publication(synthetic_site(1))

    receipts = [publish(channel, first), publish(channel, replace(first))]

    assert [r.files_written for r in receipts] == [9, 0]
    assert [h["idempotency-key"] for h, _ in recorder.requests] == ["incident-inc-2026-0042:1"] * 2


def test_one_channel_serves_one_loop_after_another(tmp_path: Path, hook: tuple[Hook, str]) -> None:
    """Given a channel whose client was made on a loop that has ended, a publish on a new loop
    still reaches the webhook (the client belongs to the loop that made it)."""
    recorder, url = hook
    settings = settings_for(tmp_path, announcement_webhook_url=url)
    channel = channel_for(settings)

    asyncio.run(channel.publish(publication(synthetic_site(1))))  # no aclose on that loop
    receipt = publish(channel, publication(synthetic_site(2), revision=2))

    assert receipt.webhook_status == 204
    assert len(recorder.requests) == 2


@pytest.mark.parametrize("url", ["ftp://cms.example.com/hook", "cms.example.com/hook", "http://"])
def test_a_webhook_url_that_cannot_work_fails_at_start_up(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="HERALD_ANNOUNCEMENT_WEBHOOK_URL"):
        AnnouncementChannel(settings_for(tmp_path, announcement_webhook_url=url))


# --- the error table ------------------------------------------------------------------------

SECRET_URL = "https://cms.example.com/hooks?token=s3cret"
REQUEST = httpx.Request("POST", SECRET_URL)

WEBHOOK_CASES: list[tuple[str, int | BaseException, type[DeliveryError], str]] = [
    ("400 bad request", 400, P, "http-400"),
    ("401 unauthorised", 401, P, "http-401"),
    ("403 forbidden", 403, P, "http-403"),
    ("404 not found", 404, P, "http-404"),
    ("409 conflict", 409, P, "http-409"),
    ("410 gone", 410, P, "http-410"),
    ("413 too large", 413, P, "http-413"),
    ("422 unprocessable", 422, P, "http-422"),
    ("301 moved", 301, P, "http-301"),
    ("304 not modified", 304, P, "http-304"),
    ("408 request timeout", 408, T, "http-408"),
    ("429 too many requests", 429, T, "http-429"),
    ("500 server error", 500, T, "http-500"),
    ("502 bad gateway", 502, T, "http-502"),
    ("503 unavailable", 503, T, "http-503"),
    ("504 gateway timeout", 504, T, "http-504"),
    ("connect timeout", httpx.ConnectTimeout(f"timed out connecting to {SECRET_URL}", request=REQUEST), T, "timeout"),
    ("read timeout", httpx.ReadTimeout(f"timed out reading {SECRET_URL}", request=REQUEST), T, "timeout"),
    ("write timeout", httpx.WriteTimeout("timed out", request=REQUEST), T, "timeout"),
    ("pool timeout", httpx.PoolTimeout("no connection free", request=REQUEST), T, "timeout"),
    ("asyncio timeout", asyncio.TimeoutError(), T, "timeout"),  # noqa: UP041 - the name asyncio code uses
    ("connect refused", httpx.ConnectError(f"refused: {SECRET_URL}", request=REQUEST), T, "connection"),
    ("read error", httpx.ReadError("connection reset", request=REQUEST), T, "connection"),
    ("write error", httpx.WriteError("broken pipe", request=REQUEST), T, "connection"),
    ("protocol error", httpx.RemoteProtocolError("server hung up", request=REQUEST), T, "connection"),
    ("proxy error", httpx.ProxyError("proxy refused", request=REQUEST), T, "connection"),
    ("socket reset", ConnectionResetError(104, "Connection reset by peer"), T, "connection"),
    ("invalid url", httpx.InvalidURL(f"bad {SECRET_URL}"), P, "invalid-url"),
    ("unsupported scheme", httpx.UnsupportedProtocol(f"no ftp: {SECRET_URL}", request=REQUEST), P, "invalid-url"),
    ("anything else", RuntimeError(f"odd {SECRET_URL}"), T, "unknown"),
]


@pytest.mark.parametrize(
    ("failure", "kind", "code"), [case[1:] for case in WEBHOOK_CASES], ids=[case[0] for case in WEBHOOK_CASES]
)
def test_each_webhook_failure_maps_to_one_error(
    failure: int | BaseException, kind: type[DeliveryError], code: str
) -> None:
    error = map_webhook_error(failure)

    assert type(error) is kind
    assert error.code == code
    assert error.message and "\n" not in error.message
    assert "s3cret" not in error.message and "cms.example.com" not in error.message


def test_a_success_is_not_a_webhook_failure() -> None:
    for status in (200, 201, 202, 204):
        with pytest.raises(ValueError, match="success"):
            map_webhook_error(status)


def test_an_error_of_ours_passes_through_the_table_unchanged() -> None:
    ours = PermanentDeliveryError("already mapped", code="x")
    assert map_webhook_error(ours) is ours
