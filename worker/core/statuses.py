"""Statuses, and the one rule that moves them: forward only.

A *delivery* is one (event, recipient, channel, step); a *route* is one (event, recipient)
walking the event's routing plan. The ledger also records what routing decided, with the
statuses in ``RouteMark``.

The rule has one exception, and only one (``overturnable``): a call's keypress and the
call's end reach ``herald serve`` as two requests that may commit in either order. A call
that ended before its keypress was recorded is failed with ``UNCONFIRMED_CALL``; the keypress
that follows is proof the person was reached, so ``acknowledged`` replaces that failure (and
only that one: a late ``delivered`` never replaces ``failed``), and the person's route ends
reached even if the failure had moved them on or ended their chain. The ledger keeps both.
"""

from __future__ import annotations

from enum import Enum


class DeliveryStatus(str, Enum):
    """Where one (event, recipient, channel, step) delivery stands."""

    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"
    SKIPPED = "skipped"  # deliberately not used for this person: opted out, throttled

    @property
    def terminal(self) -> bool:
        """A terminal status never changes again (except delivered → acknowledged)."""
        return self in TERMINAL


TERMINAL = frozenset(
    {DeliveryStatus.DELIVERED, DeliveryStatus.ACKNOWLEDGED, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED}
)

_RANK = {
    DeliveryStatus.PENDING: 0,
    DeliveryStatus.SENDING: 1,
    DeliveryStatus.RETRYING: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.FAILED: 3,
    DeliveryStatus.SKIPPED: 3,
    DeliveryStatus.ACKNOWLEDGED: 4,
}
_IN_FLIGHT = frozenset({DeliveryStatus.SENDING, DeliveryStatus.RETRYING})


def can_move(old: DeliveryStatus, new: DeliveryStatus) -> bool:
    """Whether a delivery may go from ``old`` to ``new`` without moving backwards."""
    if old in _IN_FLIGHT and new in _IN_FLIGHT:
        return True
    if new is DeliveryStatus.SKIPPED:
        return old is DeliveryStatus.PENDING  # a channel is skipped before it is tried, never after
    if old in (DeliveryStatus.FAILED, DeliveryStatus.SKIPPED):
        return False
    return _RANK[new] > _RANK[old]


def statuses_before(new: DeliveryStatus) -> list[DeliveryStatus]:
    """Every status from which ``new`` may be reached; used in guarded UPDATEs."""
    return [old for old in DeliveryStatus if can_move(old, new)]


#: The error code of a call that ended (``completed``) with no keypress recorded yet.
UNCONFIRMED_CALL = "no-confirmation"


def overturnable(new: DeliveryStatus) -> tuple[DeliveryStatus, str] | None:
    """The (status, error code) that ``new`` replaces against the forward-only rule, if any.

    Only a keypress (acknowledged) replaces a call failed as unconfirmed: the call's end may
    commit before the keypress that came first (see the module docstring).
    """
    if new is DeliveryStatus.ACKNOWLEDGED:
        return DeliveryStatus.FAILED, UNCONFIRMED_CALL
    return None


class RouteOutcome(str, Enum):
    """Where one recipient of one event stands on the routing plan."""

    IN_PROGRESS = "in_progress"  # a stage is being tried
    COVERING = "covering"  # every channel failed; waiting for the public announcement to go up
    REACHED = "reached"  # a channel confirmed it reached the person
    COVERED = "covered"  # covered by the public announcement
    UNREACHED = "unreached"  # every channel failed and this notice is never announced publicly

    @property
    def terminal(self) -> bool:
        """Reached, covered and unreached never change again (but see ``overturnable``)."""
        return self in ROUTE_TERMINAL


ROUTE_TERMINAL = frozenset({RouteOutcome.REACHED, RouteOutcome.COVERED, RouteOutcome.UNREACHED})


class RouteMark(str, Enum):
    """Ledger statuses of routing and scheduling decisions (channels ``route``, ``announcement``,
    ``schedule``, ``policy``), next to the delivery statuses of attempts."""

    FALLBACK = "fallback"  # the recipient moves on to the next stage; ``reason`` says why
    OVERRIDE = "override"  # a preference was overridden for a mandatory notice; ``reason`` says why
    COVERED = "covered"  # covered by the announcement named in ``provider_message_id``
    UNREACHED = "unreached"  # nothing left to try
    PUBLISHED = "published"  # the announcement itself went public (recipient ``public``)
    PLAIN = "plain"  # an entry of the announcement went up in plain words: its templates failed (``public``)
    FAILED = "failed"  # the announcement's pages could not be built; ``reason`` says why (``public``)
    SCHEDULED = "scheduled"  # a policy change's job is on the schedule, due when ``reason`` says
    CANCELLED = "cancelled"  # scheduled jobs cancelled: replaced by a new version, or by an operator
    RAN = "ran"  # a scheduled job did its work
    REACHED = "reached"  # a confirmation overturned the failure that had moved the person on
