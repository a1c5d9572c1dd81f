"""One valid, realistic sample event per event type.

The renderer renders every template against these at start-up, so a broken template is a
start-up error rather than a failed delivery in the middle of an incident. They are also
handy for previews and demos. Each sample is built through the same pydantic models that
validate real events, so a sample can never drift from what producers are allowed to send.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.core.clock import utcnow
from worker.intake.events import EVENT_TYPES, Event, validate_event

_OCCURRED_AT = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)

_RECIPIENT: dict[str, Any] = {
    "user_id": "u-1001",
    "name": "Sample User",
    "email": "sample.user@example.com",
    "phone": "+15005550006",
    "locale": "en",
}


def _envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": f"sample-{event_type.replace('_', '-')}",
        "type": event_type,
        "occurred_at": _OCCURRED_AT.isoformat(),
        "source": "herald.samples",
        "data": data,
    }


def _security_incident() -> dict[str, Any]:
    return _envelope(
        "security_incident",
        {
            "incident_id": "INC-2026-0042",
            "severity": "high",
            "title": "Unauthorised access to a customer support database",
            "detected_at": (_OCCURRED_AT - timedelta(hours=3)).isoformat(),
            "situation": (
                "On 23 November an attacker used a stolen support-staff credential to read "
                "records in one customer support database.\nAccess was cut off within 40 minutes."
            ),
            "impact": "Names, email addresses and support ticket subjects may have been read. "
            "Passwords and payment details are not stored in that database.",
            "measures": "We revoked the credential, forced a password reset for all support staff "
            "and enabled hardware-key sign-in. We have reported the incident to the regulator.",
            "advice": "Be wary of emails that mention your support tickets and ask you to sign in "
            "or pay. We will never ask for your password.",
            "remedies": "You can request a full account activity report and free identity "
            "monitoring for 12 months by contacting customer support.",
            "audience": {"recipients": [_RECIPIENT]},
        },
    )


def _policy_change() -> dict[str, Any]:
    # A substantial change must be at least a week ahead of now, so this date moves with time.
    effective = utcnow().replace(microsecond=0) + timedelta(days=30)
    return _envelope(
        "policy_change",
        {
            "document": "privacy_policy",
            "version": "2026-12",
            "title": "Shorter retention of support tickets",
            "summary_of_changes": "We now keep support tickets for 2 years instead of 5.\n"
            "We added a section on how we handle security incidents.",
            "url": "https://www.example.com/legal/privacy",
            "substantial": True,
            "effective_at": effective.isoformat(),
            "audience": {"recipients": [_RECIPIENT]},
        },
    )


def _account_notice() -> dict[str, Any]:
    return _envelope(
        "account_notice",
        {
            "user_id": _RECIPIENT["user_id"],
            "action": "suspended",
            "reason": "Repeated violations of section 4 of the Terms of Service (automated scraping).",
            "effective_at": _OCCURRED_AT.isoformat(),
            "recipient": _RECIPIENT,
        },
    )


def _service_notice() -> dict[str, Any]:
    return _envelope(
        "service_notice",
        {
            "kind": "maintenance",
            "title": "Database upgrade",
            "starts_at": (_OCCURRED_AT + timedelta(days=3)).isoformat(),
            "ends_at": (_OCCURRED_AT + timedelta(days=3, hours=2)).isoformat(),
            "services": ["Console", "Public API"],
            "description": "The console will be read-only and API writes will be refused during the window.",
            "audience": {"recipients": [_RECIPIENT]},
        },
    )


_BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "security_incident": _security_incident,
    "policy_change": _policy_change,
    "account_notice": _account_notice,
    "service_notice": _service_notice,
}
assert set(_BUILDERS) == set(EVENT_TYPES), "every event type needs a sample"


def sample_event(event_type: str) -> Event:
    """A valid event of ``event_type`` addressed inline to one recipient.

    Raises:
        KeyError: ``event_type`` is not one herald knows.
    """
    try:
        builder = _BUILDERS[event_type]
    except KeyError:
        raise KeyError(f"no sample for event type {event_type!r}; known: {', '.join(EVENT_TYPES)}") from None
    return validate_event(builder())
