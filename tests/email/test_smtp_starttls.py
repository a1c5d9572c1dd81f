"""STARTTLS and AUTH against a relay that insists on both, with a certificate from a private CA."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.email import EmailChannel
from worker.config import Settings
from worker.core.messages import Content, DeliveryKey, OutboundMessage, Receipt, Recipient
from worker.core.statuses import DeliveryStatus
from worker.sandbox.smtp_sink import SmtpSink


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "relay.pem", folder / "relay.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_relay(certificate: tuple[Path, Path]) -> Iterator[SmtpSink]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = SmtpSink(credentials=("herald", "s3cret"), tls_context=context)
    sink.start()
    yield sink
    sink.stop()


def send_one(settings: Settings) -> list[Receipt]:
    message = OutboundMessage(
        key=DeliveryKey("evt-tls", "ref-1", "email"),
        recipient=Recipient(ref="ref-1", user_id="u1", email="ann@example.com"),
        content=Content(cache_key="tls", locale="en", subject="TLS check", text="body", html=None),
    )

    async def go() -> list[Receipt]:
        channel = EmailChannel(settings, retry_initial_s=0.01)
        try:
            return await channel.send([message])
        finally:
            await channel.aclose()

    return asyncio.run(go())


def test_starttls_with_the_relays_ca_and_auth_delivers(tls_relay: SmtpSink, certificate: tuple[Path, Path]) -> None:
    settings = Settings(
        smtp_port=tls_relay.port,
        smtp_starttls=True,
        smtp_ca_file=certificate[0],
        smtp_username="herald",
        smtp_password="s3cret",
    )
    (receipt,) = send_one(settings)
    assert receipt.status is DeliveryStatus.DELIVERED, receipt.error
    assert tls_relay.wait_for(1, timeout=5) and tuple(tls_relay.messages[0].rcpt_tos) == ("ann@example.com",)


def test_an_untrusted_certificate_is_refused_not_ignored(tls_relay: SmtpSink) -> None:
    settings = Settings(smtp_port=tls_relay.port, smtp_starttls=True, smtp_username="herald", smtp_password="s3cret")
    (receipt,) = send_one(settings)
    assert receipt.status is DeliveryStatus.FAILED
    assert receipt.error is not None and "certificate" in receipt.error.message
    assert tls_relay.count == 0


def test_a_relay_that_requires_starttls_refuses_plain_text(tls_relay: SmtpSink) -> None:
    (receipt,) = send_one(Settings(smtp_port=tls_relay.port, smtp_starttls=False))
    assert receipt.status is DeliveryStatus.FAILED
    assert receipt.error is not None and receipt.error.code == "530"
    assert tls_relay.count == 0
