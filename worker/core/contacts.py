"""Checking and normalising contact details, with a reason a person can act on when they fail.

A bad contact never rejects a whole notice: the recipient keeps their place, the channel is
recorded as failed with the reason, and the rest of the audience is reached.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from worker.core.redact import mask_email, mask_phone

#: Mail domains that are not on the public Internet, refused unless a deployment allows them:
#: email-validator's special-use names (local, test, localhost, ...) and ``internal`` (ICANN, 2024).
SPECIAL_USE_DOMAINS = frozenset(SPECIAL_USE_DOMAIN_NAMES) | {"internal"}
#: A public top-level name checked in place of an allowed special-use one: email-validator
#: has no per-call list of names to accept, and its module-wide list is shared by every caller.
_STAND_IN = "com"


@dataclass(frozen=True, slots=True)
class Checked:
    """A contact value after checking: ``value`` when usable, else ``problem`` says why."""

    value: str | None
    problem: str | None = None


def check_email(raw: str | None, *, allowed_special_domains: Collection[str] = ()) -> Checked:
    """Normalise an email address (ASCII, no deliverability lookup), or say why it is unusable.

    An address on a special-use domain (``a@corp.internal``) is refused unless the domain's
    top-level name is in ``allowed_special_domains`` (``HERALD_EMAIL_ALLOWED_SPECIAL_DOMAINS``).
    """
    if raw is None or not raw.strip():
        return Checked(None, "no email address")
    address = raw.strip()
    special = special_use_name(address.rpartition("@")[2])
    if special is not None and special not in allowed_special_domains:
        return Checked(None, f"invalid email address {mask_email(raw)}: .{special} is a special-use domain")
    if special is not None:
        address = address[: -len(special)] + _STAND_IN
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return Checked(None, f"invalid email address {mask_email(raw)}: {exc}")
    if special is not None:
        return Checked(result.normalized[: -len(_STAND_IN)] + special)
    late = special_use_name(result.ascii_domain or result.domain)  # spelt otherwise, e.g. in full-width letters
    if late is not None and late not in allowed_special_domains:
        return Checked(None, f"invalid email address {mask_email(raw)}: .{late} is a special-use domain")
    return Checked(result.normalized)


def special_use_name(domain: str) -> str | None:
    """The special-use top-level name ``domain`` ends in (``corp.internal`` → ``internal``), if any."""
    top = domain.rpartition(".")[2].lower()
    return top if top in SPECIAL_USE_DOMAINS else None


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
