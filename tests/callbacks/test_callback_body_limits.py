"""`herald serve` reads no more of a callback than it must: no signature, no body read; a body
over ``HERALD_CALLBACK_MAX_BYTES`` is refused while it streams, whether or not it says its size."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import pytest
from sqlalchemy import Engine, func, select
from twilio.request_validator import RequestValidator

from worker.config import Settings
from worker.service.http import create_app
from worker.service.serving import ServerThread, free_port
from worker.store.engine import make_engine
from worker.store.schema import ledger, provider_callbacks

TOKEN = "limits-test-token"
CHUNK = 64 * 1024
BIG = 48 * 1024 * 1024  # far over any callback; what the server may hold is a few chunks of it
GROWTH_ALLOWED = 12 * 1024 * 1024


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def serve(engine: Engine, database_url: str, **overrides: Any) -> tuple[ServerThread, Settings]:
    port = free_port()
    settings = Settings(
        database_url=database_url,
        twilio_auth_token=TOKEN,
        public_url=f"http://127.0.0.1:{port}",
        callback_settle_s=0,
        **overrides,
    )
    return ServerThread(create_app(settings, engine), port=port).start(), settings


@pytest.fixture
def server(engine: Engine, database_url: str) -> Iterator[tuple[ServerThread, Settings]]:
    running, settings = serve(engine, database_url)
    yield running, settings
    running.stop()


def form_stream(size: int) -> Iterator[bytes]:
    """A form body of ``size`` bytes in fields of 512 KiB (each under the form parser's own
    per-field limit), produced a chunk at a time: the client holds one chunk."""
    chunk = b"a" * CHUNK
    per_field = 8  # chunks
    sent, field_no = 0, 0
    yield b"MessageSid=SMbig&MessageStatus=delivered"
    while sent < size:
        yield b"&f%d=" % field_no
        for _ in range(per_field):
            yield chunk
        sent += per_field * CHUNK
        field_no += 1


def form_size(size: int) -> int:
    """The exact length of ``form_stream(size)``."""
    return sum(len(part) for part in form_stream(size))


class PeakRss:
    """The highest resident memory of this process (which runs the server thread) while it runs."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


def post_big(url: str, *, signature: str | None, declared: bool) -> int:
    """POST a BIG form body; ``declared`` sends its Content-Length, else it goes chunked."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    if declared:
        headers["Content-Length"] = str(form_size(BIG))
    with httpx.Client(timeout=60) as client:
        return client.post(url, content=form_stream(BIG), headers=headers).status_code


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("signature", "expected"), [(None, 403), ("AAAAAAAAAAAAAAAAAAAAAAAAAAA=", 413)], ids=["unsigned", "signed-looking"]
)
def test_a_huge_callback_is_refused_without_the_server_holding_it(
    engine: Engine,
    server: tuple[ServerThread, Settings],
    signature: str | None,
    expected: int,
    declared: bool,
) -> None:
    running, _ = server
    with PeakRss() as rss:
        status = post_big(running.url + "/twilio/status", signature=signature, declared=declared)
    assert status == expected
    assert rss.growth < GROWTH_ALLOWED, f"the server grew by {rss.growth / 2**20:.0f} MiB for a {BIG >> 20} MiB body"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(provider_callbacks)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(ledger)).scalar_one() == 0
    # The server is still there for the next, genuine, request.
    assert httpx.get(running.url + "/health", timeout=10).status_code == 200


def test_a_signed_callback_over_the_configured_limit_gets_413_and_one_under_it_is_applied(
    engine: Engine, database_url: str
) -> None:
    running, settings = serve(engine, database_url, callback_max_bytes=1_024)
    try:
        url = settings.public_url + "/twilio/status"
        for size, expected in ((2_000, 413), (500, 204)):
            params = {"MessageSid": "SMlimit", "MessageStatus": "delivered", "Padding": "x" * (size - 60)}
            signature = RequestValidator(TOKEN).compute_signature(url, params)
            body = urlencode(params)
            assert abs(len(body) - size) < 40
            response = httpx.post(
                running.url + "/twilio/status",
                content=body,
                headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
                timeout=10,
            )
            assert response.status_code == expected, (size, response.text)
    finally:
        running.stop()
