"""SMS through Twilio (or the local sandbox): ``messages.create`` with a status callback.

A message accepted by Twilio is ``sent``, not delivered: the carrier's verdict arrives later
as a signed status callback at ``herald serve`` (POST /twilio/status), which moves the
delivery to delivered or failed. The number of segments is recorded with every attempt.
An answer that names no SID (``{}``, not JSON, none at all) is an unknown outcome: the
message is not sent again in this attempt, and never recorded under a SID it does not have.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import phonenumbers

from channels.base import Channel
from channels.sms_text import segments
from channels.twilio_provider import TwilioProvider, callback_url, message_verdict
from worker.config import Settings
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.messages import OutboundMessage, Receipt
from worker.core.statuses import DeliveryStatus

_MOBILE = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}


def check_mobile(number: str | None) -> PermanentDeliveryError | None:
    """Why this number cannot take an SMS, or None; checked before any request is made."""
    if not number:
        return PermanentDeliveryError("no phone number on record", code="no-contact")
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return PermanentDeliveryError("invalid phone number", code="invalid-contact")
    if not phonenumbers.is_valid_number(parsed):
        return PermanentDeliveryError("invalid phone number", code="invalid-contact")
    if phonenumbers.number_type(parsed) not in _MOBILE:
        return PermanentDeliveryError("not a mobile number", code="not-mobile")
    return None


class SmsChannel(Channel):
    """Text messages; each send claims a slot of the sender's rate limit first."""

    name = "sms"

    def __init__(self, settings: Settings, *, concurrency: int = 8, retry_initial_s: float = 0.2) -> None:
        self.settings = settings
        self._provider = TwilioProvider(
            settings,
            rate_per_second=settings.sms_rate_per_second,
            rate_key=f"sms:{settings.twilio_messaging_service_sid or settings.twilio_from}",
            retry_initial_s=retry_initial_s,
        )
        self._concurrency = concurrency
        self._callback = f"{settings.public_url.rstrip('/')}/twilio/status"

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Receipt]:
        """Send every message; per-message failures come back as receipts."""
        gate = asyncio.Semaphore(self._concurrency)

        async def one(message: OutboundMessage) -> Receipt:
            async with gate:
                return await self._send_one(message)

        return list(await asyncio.gather(*(one(m) for m in messages)))

    async def _send_one(self, message: OutboundMessage) -> Receipt:
        problem = check_mobile(message.recipient.phone)
        if problem is not None:
            return Receipt.failed(message.key, problem, tries=0)
        body = message.content.text
        count = str(segments(body).segments)
        params: dict[str, str] = {
            "to": str(message.recipient.phone),
            "body": body,
            "status_callback": callback_url(self._callback, message.key),
        }
        if self.settings.twilio_messaging_service_sid:
            params["messaging_service_sid"] = self.settings.twilio_messaging_service_sid
        else:
            params["from_"] = self.settings.twilio_from
        sid, error, tries = await self._provider.create(lambda client: client.messages.create_async(**params))
        if error is not None:
            receipt = Receipt.failed(message.key, error, tries=tries)
            return dataclasses.replace(receipt, detail={"segments": count})
        return Receipt(
            key=message.key,
            status=DeliveryStatus.SENT,
            provider_message_id=sid,
            tries=tries,
            detail={"segments": count},
        )

    async def fetch_verdict(self, provider_message_id: str) -> tuple[DeliveryStatus | None, DeliveryError | None]:
        """Ask Twilio for the message's status, for when its final callback never came."""
        status, code = await self._provider.fetch_status("message", provider_message_id)
        return message_verdict(status, code)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._provider.aclose()
