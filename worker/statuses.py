"""Delivery statuses and the one rule that moves them: forward only."""

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

    @property
    def terminal(self) -> bool:
        """A terminal status never changes again (except delivered → acknowledged)."""
        return self in TERMINAL


TERMINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.ACKNOWLEDGED, DeliveryStatus.FAILED})

_RANK = {
    DeliveryStatus.PENDING: 0,
    DeliveryStatus.SENDING: 1,
    DeliveryStatus.RETRYING: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.FAILED: 3,
    DeliveryStatus.ACKNOWLEDGED: 4,
}
_IN_FLIGHT = frozenset({DeliveryStatus.SENDING, DeliveryStatus.RETRYING})


def can_move(old: DeliveryStatus, new: DeliveryStatus) -> bool:
    """Whether a delivery may go from ``old`` to ``new`` without moving backwards."""
    if old in _IN_FLIGHT and new in _IN_FLIGHT:
        return True
    if old is DeliveryStatus.FAILED:
        return False
    return _RANK[new] > _RANK[old]


def statuses_before(new: DeliveryStatus) -> list[DeliveryStatus]:
    """Every status from which ``new`` may be reached; used in guarded UPDATEs."""
    return [old for old in DeliveryStatus if can_move(old, new)]
