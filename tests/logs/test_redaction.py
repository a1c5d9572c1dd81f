"""What a log line may keep and what it must mask: contacts and names go, ids and times stay.

Every table row goes through the logging filter the way a real record does, so the rules
are tested where they act.
"""

from __future__ import annotations

import logging
import sys

import dramatiq
import pytest

from worker.logs import RedactingFilter


def logged(text: str) -> str:
    """The message a record carrying ``text`` leaves the filter with."""
    record = logging.LogRecord("herald.test", logging.WARNING, __file__, 1, "%s", (text,), None)
    assert RedactingFilter().filter(record)
    return record.getMessage()


@pytest.mark.parametrize(
    ("text", "secret", "masked"),
    [
        # international and national phone numbers
        ("sms to +8613812345678 failed", "13812345678", "+86*********78"),
        ("sms to +1 (415) 555-0123 failed", "555-0123", "+1********23"),
        ("call +44 20 7946 0958 now", "7946 0958", "+44********58"),
        ("mobile 13812345678 refused", "13812345678", "*********78"),
        ("phone=(415) 555-0123;", "555-0123", "********23"),
        ("office 415-555-0123.", "415-555-0123", "********23"),
        ("office 415.555.0123", "415.555.0123", "********23"),
        ("landline (010) 6234 5678", "6234 5678", "*********78"),
        ("tel:+14155550123", "4155550123", "+1********23"),
        ("'13812345678'", "13812345678", "'*********78'"),
        ("local 555-0123 x", "555-0123", "*****23"),
        ("uk 01632 960983", "960983", "*********83"),
        ("cn +86 13812345678", "13812345678", "+86*********78"),
        ("two 13812345678 13912345678", "13912345678", "*********78 *********78"),
        # email addresses, ASCII and internationalised
        ("to alice@example.com", "alice@", "a***@example.com"),
        ("to user@bücher.de", "user@", "u***@bücher.de"),
        ("to 用户@例子.中国 failed", "用户@", "用***@例子.中国"),
        ("to Ünal.Öz@例子.中国", "Ünal.Öz@", "Ü***@例子.中国"),
        ('to "john doe"@example.com', "john doe", "***@example.com"),
        # display names in address forms
        ("To: Ann Smith <ann@example.com>", "Ann Smith", "To: A*** <a***@example.com>"),
        ('To: "Smith, Ann" <ann@example.com>', "Smith, Ann", 'To: "S***" <a***@example.com>'),
        ("could not send to Ann Smith <ann@example.com>: refused", "Smith", "send to A*** <a***@example.com>"),
        ("收件人 张三 <zhang@example.com>", "张三", "*** <z***@example.com>"),
        ("recipient: Ann Marie O'Neil-Smith <ann@example.com>", "O'Neil", "A*** <a***@example.com>"),
    ],
)
def test_contacts_and_names_are_masked(text: str, secret: str, masked: str) -> None:
    line = logged(text)
    assert secret not in line
    assert masked in line


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01 12:34:56,789 INFO herald.ingest 4321 accepted",
        "detected at 2024-05-01T12:34:56.789012+08:00, reported 2024-05-02T00:00:00Z",
        "effective 01/05/2024 and 2024/05/01 and 01.05.2024",
        "message 550e8400-e29b-41d4-a716-446655440000 acknowledged",
        "message 12345678-1234-5678-1234-567812345678 acknowledged",
        "redis at 127.0.0.1:6379 and postgres at 10.20.30.40:5432, db host:15432",
        "queued 2,000 recipients in 1,234,567 steps",
        "event inc-2024-0042 and evt_20240501_0001 and pc-1a2b3c4d5e and inc-20240501-7",
        "SID SM0123456789abcdef0123456789abcdef, account AC77777777777777777777777777777777",
        "took 1234.5678 s, ratio 3.14159265, 1234567.5 bytes",
        "herald 1.2.3 on dramatiq 2.2.1, 3 of 250 deliveries will be retried",
        "written to /var/lib/herald/12345678/site and https://example.com/a/2024/05/01",
        "sent to <a***@example.com>",
    ],
)
def test_ids_times_and_counts_are_kept(text: str) -> None:
    assert logged(text) == text


def test_masking_is_idempotent() -> None:
    once = logged("To: Ann Smith <ann@example.com>, +8613812345678, 13812345678")
    assert logged(once) == once


def test_exceptions_stacks_and_dramatiq_messages_are_rewritten_too() -> None:
    message = dramatiq.Message(
        queue_name="herald.ingest", actor_name="ingest", args=('{"email": "ann@example.com"}',), kwargs={}, options={}
    )
    try:
        raise KeyError("ann.smith@example.com +8613812345678")
    except KeyError:
        failed = "Failed to process message %s."
        record = logging.LogRecord("dramatiq.worker.WorkerThread", logging.ERROR, __file__, 1, failed, (message,), None)
        record.exc_info = sys.exc_info()
    record.stack_info = "Stack (most recent call last):\n  sending to 13812345678"
    received = logging.LogRecord(
        "dramatiq.actor.Actor", logging.DEBUG, __file__, 1, "Received args=%r kwargs=%r.", (("payload",), {}), None
    )
    broken = logging.LogRecord("herald.x", logging.INFO, __file__, 1, "%s and %s", ("ann@example.com",), None)
    for each in (record, received, broken):
        assert RedactingFilter().filter(each)

    written = logging.Formatter().format(record)
    assert f"Failed to process message ingest[{message.message_id}]." in written
    assert "KeyError: 'a***@example.com +86*********78'" in written
    assert "sending to *********78" in written
    assert "ann" not in written and "13812345678" not in written
    assert logging.Formatter().format(received) == "Received args='<1 tuple items>' kwargs='<0 dict items>'."
    assert logging.Formatter().format(broken) == "%s and %s (arguments could not be formatted)"
