"""Reconciliation: ask the provider about messages whose final callback never came.

A provider does not retry its status callbacks for long, and ``herald serve`` may be down
when one is sent; without this, an SMS or call could stay ``sent`` for ever and its
recipient would never reach a terminal status. Some time after a batch was sent, herald
asks the provider about whatever is still ``sent``; after the last round, anything still
undecided is failed with the reason, so that fallback can act on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from channels.base import ReportsBack
from worker.core.clock import utcnow
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.statuses import DeliveryStatus
from worker.fanout.outbox import Dispatch
from worker.runtime import Runtime
from worker.store import moves, outcomes

log = logging.getLogger("herald.reconcile")


def reconcile(
    rt: Runtime, channel: str, provider_message_ids: Sequence[str], *, final: bool
) -> tuple[list[str], Dispatch]:
    """Apply the provider's current verdict to each still-``sent`` message.

    Returns the ids still open, and what routing asks to send now that some are decided.
    """
    dispatch = Dispatch()
    with rt.engine.connect() as conn:
        open_ids = outcomes.awaiting_verdict(conn, provider_message_ids)
    sender = rt.channel(channel)
    if not open_ids or not isinstance(sender, ReportsBack):
        return [], dispatch
    still_open: list[str] = []
    for pmid in open_ids:
        try:
            status, error = rt.run(sender.fetch_verdict(pmid))
        except DeliveryError as exc:
            log.warning("could not ask the provider about %s: %s", pmid, exc.message)
            status, error = None, None
        if status is None or status is DeliveryStatus.SENT:
            if not final:
                still_open.append(pmid)
                continue
            status = DeliveryStatus.FAILED
            error = PermanentDeliveryError("no final status from the provider", code="no-final-status")
        with rt.engine.begin() as conn:
            moved = moves.apply_status(conn, pmid, status, error)
            if isinstance(moved, moves.Move):
                dispatch.extend(rt.router.after_moves(conn, [moved], utcnow()))
    if open_ids:
        log.info("%s: asked the provider about %d messages, %d still open", channel, len(open_ids), len(still_open))
    return still_open, dispatch
