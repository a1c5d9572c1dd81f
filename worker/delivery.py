"""Delivery of one batch on one channel: claim, render, send, record.

The ledger is written on both sides of the provider call: the claim (a durable record)
before it, the attempt row and status move after it. Whatever did not finish is left in a
claimable state, and the caller raises so that dramatiq retries the message later.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from channels.base import DeliveryKey, OutboundMessage, Receipt
from worker.errors import PermanentDeliveryError
from worker.runtime import Runtime
from worker.statuses import DeliveryStatus
from worker.store import ledger, recipients

log = logging.getLogger("herald.delivery")


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Counts for one batch; ``unfinished`` must be retried later."""

    sent: int
    failed: int
    retrying: int
    busy: int
    skipped: int
    awaiting: tuple[str, ...] = ()  # provider ids accepted but not yet confirmed

    @property
    def unfinished(self) -> int:
        """Deliveries still owed: transient failures and keys held by another worker."""
        return self.retrying + self.busy


def deliver_batch(
    rt: Runtime, event_id: str, channel: str, refs: Sequence[str], *, claimant: str, step: int = 0
) -> BatchOutcome:
    """Send one batch; every claimed key ends with a ledger row for this attempt."""
    lease = timedelta(seconds=rt.settings.lease_s)
    with rt.engine.begin() as conn:
        claim = ledger.claim(conn, event_id, channel, refs, claimant=claimant, lease=lease, step=step)
        if not claim.attempts:
            return BatchOutcome(0, 0, 0, len(claim.busy), len(refs) - len(claim.busy))
        people = recipients.load(conn, claim.attempts)
    event = rt.event(event_id)

    messages: list[OutboundMessage] = []
    erased: list[Receipt] = []
    for ref in claim.attempts:
        key = DeliveryKey(event_id, ref, channel, step)
        person = people.get(ref)
        if person is None:
            erased.append(Receipt.failed(key, PermanentDeliveryError("recipient erased before delivery")))
            continue
        content = rt.renderer.render(event, channel, person.locale)
        messages.append(OutboundMessage(key=key, recipient=person, content=content))

    receipts = _send_in_chunks(rt, channel, messages, claim.attempts) + erased
    if erased:
        with rt.engine.begin() as conn:
            ledger.record(conn, erased, claim.attempts)

    counts = Counter(r.status for r in receipts)
    outcome = BatchOutcome(
        sent=counts[DeliveryStatus.DELIVERED] + counts[DeliveryStatus.SENT],
        failed=counts[DeliveryStatus.FAILED],
        retrying=counts[DeliveryStatus.RETRYING],
        busy=len(claim.busy),
        skipped=len(refs) - len(claim.attempts) - len(claim.busy),
        awaiting=tuple(
            r.provider_message_id for r in receipts if r.status is DeliveryStatus.SENT and r.provider_message_id
        ),
    )
    log.info(
        "event %s %s batch: %d sent, %d failed, %d to retry, %d held elsewhere, %d already done",
        event_id,
        channel,
        outcome.sent,
        outcome.failed,
        outcome.retrying,
        outcome.busy,
        outcome.skipped,
    )
    return outcome


def _send_in_chunks(
    rt: Runtime, channel: str, messages: list[OutboundMessage], attempts: dict[str, int]
) -> list[Receipt]:
    """Send and record a few messages at a time.

    A worker that dies mid-batch can only have sent-but-unrecorded the chunk it was on, so a
    crash re-sends at most one chunk per batch in flight, not the whole batch. When a whole
    chunk comes back transient (the provider is down) the rest is not tried this time.
    """
    receipts: list[Receipt] = []
    size = rt.settings.record_every
    for start in range(0, len(messages), size):
        chunk = messages[start : start + size]
        sent: list[Receipt] = list(rt.run(rt.channel(channel).send(chunk)))  # type: ignore[call-overload]
        with rt.engine.begin() as conn:
            ledger.record(conn, sent, attempts)
        receipts += sent
        outage = next((r.error for r in sent if r.error is not None), None)
        if outage is not None and outage.transient and all(r.status is DeliveryStatus.RETRYING for r in sent):
            rest = [Receipt.failed(m.key, outage, tries=0) for m in messages[start + size :]]
            if rest:
                with rt.engine.begin() as conn:
                    ledger.record(conn, rest, attempts)
            return receipts + rest
    return receipts


def exhaust_batch(rt: Runtime, event_id: str, channel: str, refs: Sequence[str], *, step: int = 0) -> int:
    """After dramatiq's last retry: every unfinished key of the batch becomes failed."""
    with rt.engine.begin() as conn:
        count = ledger.exhaust(conn, event_id, channel, refs, "retries exhausted", step=step)
    if count:
        log.warning("event %s %s: %d deliveries failed after the last retry", event_id, channel, count)
    return count
