"""Every way aiosmtplib or the network can fail maps to one herald error with a safe message."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from channels.email import MAX_REPLY_CHARS, map_smtp_error
from worker.core.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from worker.core.redact import mask_email, mask_emails_in, mask_phone

T, P = TransientDeliveryError, PermanentDeliveryError


def refused(code: int, text: str = "mailbox problem", rcpt: str = "bob@example.com") -> SMTPRecipientRefused:
    return SMTPRecipientRefused(code, text, rcpt)


# name, vendor exception, our error, code, provider (True: the relay failed, a backup relay may succeed)
CASES: list[tuple[str, BaseException, type[DeliveryError], str | None, bool]] = [
    ("421 service closing", SMTPResponseException(421, "4.3.2 Service shutting down"), T, "421", True),
    ("450 mailbox busy", SMTPDataError(450, "4.2.0 Mailbox busy"), T, "450", False),
    ("451 local error", SMTPDataError(451, "4.3.0 Local error in processing"), T, "451", False),
    ("452 insufficient storage", SMTPDataError(452, "4.3.1 Insufficient system storage"), T, "452", False),
    ("550 no such user", refused(550, "5.1.1 User unknown"), P, "550", False),
    ("551 user not local", refused(551, "5.1.6 User not local"), P, "551", False),
    ("552 storage exceeded", SMTPDataError(552, "5.2.2 Mailbox full"), P, "552", False),
    ("553 sender not allowed", SMTPSenderRefused(553, "5.1.8 Bad sender", "herald@example.com"), P, "553", True),
    ("554 transaction failed", SMTPDataError(554, "5.7.1 Message rejected as spam"), P, "554", False),
    ("501 helo refused", SMTPHeloError(501, "5.5.4 Invalid domain"), P, "501", True),
    ("greeting 421", SMTPConnectResponseError(421, "Too many connections"), T, "421", True),
    ("greeting 554", SMTPConnectResponseError(554, "No SMTP service here"), P, "554", True),
    ("all refused 4xx", SMTPRecipientsRefused([refused(450, "4.2.1 Try later")]), T, "450", False),
    ("all refused 5xx", SMTPRecipientsRefused([refused(550, "5.1.1 Unknown")]), P, "550", False),
    ("refused, no reply", SMTPRecipientsRefused([]), T, None, False),
    ("auth 535", SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"), P, "535", True),
    ("auth 454", SMTPAuthenticationError(454, "4.7.0 Temporary authentication failure"), T, "454", True),
    ("disconnected", SMTPServerDisconnected("Connection lost"), T, None, True),
    ("connect error", SMTPConnectError("Error connecting to mail on port 25"), T, None, True),
    ("connect timeout", SMTPConnectTimeoutError("Timed out connecting"), T, None, True),
    ("smtp timeout", SMTPTimeoutError("Timed out"), T, None, True),
    ("read timeout", SMTPReadTimeoutError("Timed out waiting for server response"), T, None, True),
    ("asyncio timeout", asyncio.TimeoutError(), T, None, True),  # noqa: UP041 - the name asyncio code uses
    ("connection refused", ConnectionRefusedError(111, "Connection refused"), T, None, True),
    ("connection reset", ConnectionResetError(104, "Connection reset by peer"), T, None, True),
    ("os error", OSError(113, "No route to host"), T, None, True),
    ("tls certificate", ssl.SSLCertVerificationError("certificate verify failed"), P, None, True),
    ("extension missing", SMTPNotSupported("SMTPUTF8 is not supported by this server"), P, None, True),
    ("bad address", ValueError("Address contains a newline"), P, None, False),
    ("odd reply code", SMTPResponseException(-1, "Malformed reply"), T, None, False),
    ("something else", RuntimeError("boom"), T, None, False),
    ("rcpt 421", SMTPRecipientsRefused([refused(421, "4.3.2 Closing connection")]), T, "421", True),
    ("no starttls", SMTPException("SMTP STARTTLS extension not supported by server."), T, None, True),
    ("no auth", SMTPException("The SMTP AUTH extension is not supported by this server."), T, None, True),
]


@pytest.mark.parametrize(
    ("exc", "expected", "code", "provider"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_vendor_error_maps_to_our_error(
    exc: BaseException, expected: type[DeliveryError], code: str | None, provider: bool
) -> None:
    error = map_smtp_error(exc)

    assert type(error) is expected
    assert error.code == code
    assert error.transient is (expected is T)
    assert error.provider is provider
    assert error.message and "\n" not in error.message


def test_our_errors_pass_through_unchanged() -> None:
    error = PermanentDeliveryError("already mapped", code="550")
    assert map_smtp_error(error) is error


def test_server_text_is_masked_and_truncated() -> None:
    exc = refused(550, "5.1.1 <alice.smith@example.com>: Recipient address rejected\r\n" + "x" * 500)

    error = map_smtp_error(SMTPRecipientsRefused([exc]))

    assert "alice.smith@example.com" not in error.message
    assert "a***@example.com" in error.message
    assert "\r" not in error.message and "\n" not in error.message
    assert len(error.message) <= len("recipient refused: ") + MAX_REPLY_CHARS


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("alice@example.com", "a***@example.com"),
        ("  bob@mail.example.org ", "b***@mail.example.org"),
        ("not-an-address", "***"),
        ("@example.com", "***"),
        ("", "***"),
        (None, "***"),
    ],
)
def test_mask_email(raw: str | None, masked: str) -> None:
    assert mask_email(raw) == masked


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("+8613812345678", "+86*********78"),
        ("+1 415 555 0100", "+1********00"),
        ("+44 20 7946 0958", "+44********58"),
        ("12", "***"),
        ("", "***"),
        (None, "***"),
    ],
)
def test_mask_phone_keeps_country_code_and_last_two_digits(raw: str | None, masked: str) -> None:
    assert mask_phone(raw) == masked


def test_mask_emails_in_free_text() -> None:
    text = "550 5.1.1 <carol@example.com>: unknown; also dave@example.net"
    assert mask_emails_in(text) == "550 5.1.1 <c***@example.com>: unknown; also d***@example.net"
