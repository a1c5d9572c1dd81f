"""Checking and normalising contact details, with a reason a person can act on when they fail.

A bad contact never rejects a whole notice: the recipient keeps their place, the channel is
recorded as failed with the reason, and the rest of the audience is reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from worker.redact import mask_email, mask_phone


@dataclass(frozen=True, slots=True)
class Checked:
    """A contact value after checking: ``value`` when usable, else ``problem`` says why."""

    value: str | None
    problem: str | None = None


def check_email(raw: str | None) -> Checked:
    """Normalise an email address (ASCII, no deliverability lookup), or say why it is unusable."""
    if raw is None or not raw.strip():
        return Checked(None, "no email address")
    try:
        result = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return Checked(None, f"invalid email address {mask_email(raw)}: {exc}")
    return Checked(result.normalized)


def check_phone(raw: str | None) -> Checked:
    """Normalise a phone number to E.164, or say why it is unusable."""
    if raw is None or not raw.strip():
        return Checked(None, "no phone number")
    try:
        number = phonenumbers.parse(raw.strip(), None)
    except phonenumbers.NumberParseException as exc:
        return Checked(None, f"invalid phone number {mask_phone(raw)}: {exc}")
    if not phonenumbers.is_valid_number(number):
        return Checked(None, f"invalid phone number {mask_phone(raw)}")
    return Checked(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
