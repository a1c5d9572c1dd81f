"""Read-only questions about deliveries: counts, failures, what is stuck or unconfirmed.

The CLI, the dead-man check, reconciliation, frequency caps and benchmarks ask these; none
of them changes a row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Connection, and_, func, or_, select

from worker.core.statuses import TERMINAL, DeliveryStatus
from worker.store.schema import deliveries


def outcome_counts(conn: Connection, event_id: str | None = None) -> dict[tuple[str, str], int]:
    """Deliveries by (channel, status), for one event or all of them."""
    stmt = select(deliveries.c.channel, deliveries.c.status, func.count()).group_by(
        deliveries.c.channel, deliveries.c.status
    )
    if event_id is not None:
        stmt = stmt.where(deliveries.c.event_id == event_id)
    return {(channel, status): count for channel, status, count in conn.execute(stmt)}


def unfinished_count(conn: Connection, event_ids: Iterable[str]) -> int:
    """How many deliveries of these events are not yet in a terminal status."""
    stmt = select(func.count()).where(
        deliveries.c.event_id.in_(list(event_ids)),
        deliveries.c.status.not_in([s.value for s in TERMINAL]),
    )
    return int(conn.execute(stmt).scalar_one())


def failure_reasons(conn: Connection, event_id: str) -> list[tuple[str, str, int, str]]:
    """Failed deliveries of an event grouped by (channel, error code), with a sample reason."""
    stmt = (
        select(deliveries.c.channel, deliveries.c.error_code, func.count(), func.min(deliveries.c.reason))
        .where(deliveries.c.event_id == event_id, deliveries.c.status == DeliveryStatus.FAILED.value)
        .group_by(deliveries.c.channel, deliveries.c.error_code)
        .order_by(deliveries.c.channel, func.count().desc())
    )
    return [(channel, code or "-", count, reason or "") for channel, code, count, reason in conn.execute(stmt)]


def recent_counts(
    conn: Connection, channel: str, refs: Sequence[str], since: datetime, exclude_event: str
) -> dict[str, int]:
    """Per recipient, how many notices of other events went out on ``channel`` since ``since``."""
    if not refs:
        return {}
    sent = [DeliveryStatus.SENT.value, DeliveryStatus.DELIVERED.value, DeliveryStatus.ACKNOWLEDGED.value]
    rows = conn.execute(
        select(deliveries.c.recipient_ref, func.count(func.distinct(deliveries.c.event_id)))
        .where(
            deliveries.c.channel == channel,
            deliveries.c.recipient_ref.in_(list(refs)),
            deliveries.c.created_at >= since,
            deliveries.c.event_id != exclude_event,
            deliveries.c.status.in_(sent),
        )
        .group_by(deliveries.c.recipient_ref)
    )
    return {ref: int(count) for ref, count in rows}


def stuck(conn: Connection, before: datetime, now: datetime, limit: int) -> list[tuple[str, str, int, str, str]]:
    """(event_id, channel, step, ref, status) of deliveries nobody has moved since ``before``.

    Pending and retrying ones whose message may have been lost, and sending ones whose
    worker's lease ran out; the dead-man check hands them on again.
    """
    stmt = (
        select(
            deliveries.c.event_id,
            deliveries.c.channel,
            deliveries.c.step,
            deliveries.c.recipient_ref,
            deliveries.c.status,
        )
        .where(
            deliveries.c.updated_at < before,
            or_(
                deliveries.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value]),
                and_(deliveries.c.status == DeliveryStatus.SENDING.value, deliveries.c.lease_until < now),
            ),
        )
        .order_by(deliveries.c.updated_at)
        .limit(limit)
    )
    return [(e, c, step, ref, status) for e, c, step, ref, status in conn.execute(stmt)]


def unconfirmed_sent(conn: Connection, before: datetime, limit: int) -> list[tuple[str, str]]:
    """(channel, provider id) of messages still only ``sent`` since before ``before``."""
    stmt = (
        select(deliveries.c.channel, deliveries.c.provider_message_id)
        .where(
            deliveries.c.status == DeliveryStatus.SENT.value,
            deliveries.c.updated_at < before,
            deliveries.c.provider_message_id.is_not(None),
        )
        .order_by(deliveries.c.updated_at)
        .limit(limit)
    )
    return [(channel, pmid) for channel, pmid in conn.execute(stmt)]


def pending_by_step(conn: Connection, event_id: str, refs: Sequence[str]) -> dict[tuple[str, int], list[str]]:
    """Deliveries of these recipients not yet claimed, by (channel, step)."""
    if not refs:
        return {}
    rows = conn.execute(
        select(deliveries.c.channel, deliveries.c.step, deliveries.c.recipient_ref).where(
            deliveries.c.event_id == event_id,
            deliveries.c.recipient_ref.in_(list(refs)),
            deliveries.c.status == DeliveryStatus.PENDING.value,
        )
    )
    grouped: dict[tuple[str, int], list[str]] = defaultdict(list)
    for channel, step, ref in rows:
        grouped[(channel, step)].append(ref)
    return dict(grouped)


def is_recorded(conn: Connection, provider_message_id: str) -> bool:
    """Whether a delivery with this provider id has been recorded."""
    stmt = select(deliveries.c.id).where(deliveries.c.provider_message_id == provider_message_id)
    return conn.execute(stmt.limit(1)).first() is not None


def awaiting_verdict(conn: Connection, provider_message_ids: Sequence[str]) -> list[str]:
    """Of these provider ids, those whose delivery is still only ``sent``."""
    if not provider_message_ids:
        return []
    rows = conn.execute(
        select(deliveries.c.provider_message_id).where(
            deliveries.c.provider_message_id.in_(list(provider_message_ids)),
            deliveries.c.status == DeliveryStatus.SENT.value,
        )
    )
    return [pmid for (pmid,) in rows]
