"""Delivery of one batch on one channel: claim, render, send, record, route.

The ledger is written on both sides of the provider call: the claim (a durable record)
before it, the attempt row and status move after it. Whatever did not finish is left in a
claimable state, and the caller raises so that dramatiq retries the message later. In the
transaction that records a chunk, routing decides what the results mean for each person
(reached, next stage, announcement); what it asks to send is returned to the caller.

Every claim counts one provider request per key before the provider is called (given back
when nothing went out), so an outcome that stays unknown is resent only until a key has
``HERALD_MAX_PROVIDER_REQUESTS`` requests that may have reached the person; then it fails,
with that reason, and routing moves the person on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from worker.core.clock import utcnow
from worker.core.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError, UnknownOutcomeError
from worker.core.messages import DeliveryKey, OutboundMessage, Receipt
from worker.core.statuses import DeliveryStatus
from worker.fanout.outbox import Dispatch
from worker.runtime import Runtime
from worker.store import deliveries, recipients

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
    dispatch: Dispatch = field(default_factory=Dispatch)  # what routing asks to send next

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
        claim = deliveries.claim(conn, event_id, channel, refs, claimant=claimant, lease=lease, step=step)
        if not claim.attempts:
            return BatchOutcome(0, 0, 0, len(claim.busy), len(refs) - len(claim.busy))
        people = recipients.load(conn, claim.attempts, event_id=event_id)
    event = rt.event(event_id)
    cap = rt.settings.max_provider_requests

    messages: list[OutboundMessage] = []
    unsent: list[Receipt] = []  # settled without a request: erased people, keys at the cap, unrenderable notices
    for ref in claim.attempts:
        key = DeliveryKey(event_id, ref, channel, step)
        person = people.get(ref)
        if claim.requests.get(ref, 0) > cap:
            unsent.append(Receipt.failed(key, cap_error(cap), tries=0))
            continue
        if person is None:
            unsent.append(Receipt.failed(key, PermanentDeliveryError("recipient erased before delivery"), tries=0))
            continue
        zone = person.time_zone or rt.settings.locale_time_zones.get(person.locale)
        try:
            content = rt.renderer.render(event, channel, person.locale, zone)
        except Exception as exc:  # one person's notice that cannot be written must not hold up the batch
            unsent.append(Receipt.failed(key, _unrenderable(exc), tries=0))
            continue
        messages.append(OutboundMessage(key=key, recipient=person, content=content))

    dispatch = Dispatch()
    receipts = _send_in_chunks(rt, channel, messages, claim, dispatch)
    receipts += _record(rt, unsent, claim, dispatch)[0]

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
        dispatch=dispatch,
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


def _unrenderable(exc: Exception) -> PermanentDeliveryError:
    """A rendering failure for one person (their locale, their zone): rendering it again gives
    the same failure, so it is permanent and the person moves on to their next channel."""
    log.error("could not render a notice for one recipient: %s", type(exc).__name__)
    detail = " ".join(str(exc).split())[:200]
    return PermanentDeliveryError(f"the notice could not be rendered: {type(exc).__name__}: {detail}", code="render")


def _send_in_chunks(
    rt: Runtime, channel: str, messages: list[OutboundMessage], claim: deliveries.Claim, dispatch: Dispatch
) -> list[Receipt]:
    """Send and record a few messages at a time.

    A worker that dies mid-batch can only have sent-but-unrecorded the chunk it was on, so a
    crash re-sends at most one chunk per batch in flight, not the whole batch. A channel that
    cannot duplicate anything (``Channel.idempotent``) sends the whole batch as one chunk.
    When a whole chunk comes back transient (the provider is down) the rest is not tried
    this time. Each chunk after the first goes out only to the keys this claim still holds,
    checked in the transaction that recorded the chunk before it (``deliveries.still_held``): a
    worker that was paused while its message went to another worker stops where it stands.
    """
    receipts: list[Receipt] = []
    sender = rt.channel(channel)
    size = len(messages) if sender.idempotent else rt.settings.record_every
    chunk = messages[:size]
    for start in range(0, len(messages), size):
        sent: list[Receipt] = rt.run(sender.send(chunk)) if chunk else []
        following = messages[start + size : start + 2 * size]
        recorded, held = _record(rt, sent, claim, dispatch, following=following)
        receipts += recorded
        taken = len(following) - len(held)
        if taken:
            log.warning(
                "event %s %s: %d keys were taken over by another copy of this batch", claim.event_id, channel, taken
            )
        chunk = [m for m in following if m.key.recipient_ref in held]
        outage = next((r.error for r in sent if r.error is not None), None)
        if outage is not None and outage.transient and all(r.status is DeliveryStatus.RETRYING for r in sent):
            if outage.outcome_unknown:
                outage = TransientDeliveryError(f"not attempted: {outage.message}", code=outage.code, provider=True)
            rest = [Receipt.failed(m.key, outage, tries=0) for m in chunk + messages[start + 2 * size :]]
            return receipts + _record(rt, rest, claim, dispatch)[0]
    return receipts


def _record(
    rt: Runtime,
    receipts: list[Receipt],
    claim: deliveries.Claim,
    dispatch: Dispatch,
    *,
    following: Sequence[OutboundMessage] = (),
) -> tuple[list[Receipt], set[str]]:
    """Hold receipts to the request cap, record them and route on them, in one transaction;
    in the same transaction, which keys of the ``following`` chunk the claim still holds."""
    if not receipts and not following:
        return [], set()
    receipts = held_to_cap(receipts, claim.requests, rt.settings.max_provider_requests)
    lease = timedelta(seconds=rt.settings.lease_s)
    with rt.engine.begin() as conn:
        if receipts:
            moves = deliveries.record(conn, receipts, claim.attempts, claim.requests)
            dispatch.extend(rt.router.after_receipts(conn, claim.event_id, receipts, moves, now=utcnow()))
        held = deliveries.still_held(conn, claim, [m.key.recipient_ref for m in following], lease)
    return receipts, held


def cap_error(cap: int, last: DeliveryError | None = None) -> DeliveryError:
    """Why a key that reached the request cap fails; still an unknown outcome if its last request was one."""
    message = f"provider request cap reached ({cap}): outcome of earlier requests unknown"
    if last is not None:
        message += f"; last: {last.message}"
    if last is not None and last.outcome_unknown:
        return UnknownOutcomeError(message, code="request-cap")
    return PermanentDeliveryError(message, code="request-cap")


def held_to_cap(receipts: list[Receipt], counted: dict[str, int], cap: int) -> list[Receipt]:
    """Fail at once what would be retried though its key used up its requests; a retry could only fail."""
    held: list[Receipt] = []
    for receipt in receipts:
        count = counted.get(receipt.key.recipient_ref)
        retrying = receipt.status is DeliveryStatus.RETRYING and count is not None
        if retrying and (count or 0) - (0 if receipt.may_have_gone_out else 1) >= cap:
            receipt = dataclasses.replace(receipt, status=DeliveryStatus.FAILED, error=cap_error(cap, receipt.error))
        held.append(receipt)
    return held


def exhaust_batch(
    rt: Runtime, event_id: str, channel: str, refs: Sequence[str], *, claimant: str, step: int = 0
) -> Dispatch:
    """After dramatiq's last retry: the batch's keys not handed to the provider fail, and their people move on.

    ``claimant`` is the exhausted message's id: keys it still holds as ``sending`` fail with the
    rest, while ``sent`` ones wait for their verdict.
    """
    with rt.engine.begin() as conn:
        failed = deliveries.exhaust(conn, event_id, channel, refs, "retries exhausted", step=step, claimant=claimant)
        dispatch = rt.router.after_receipts(conn, event_id, failed, now=utcnow())
    if failed:
        log.warning("event %s %s: %d deliveries failed after the last retry", event_id, channel, len(failed))
    return dispatch
