"""Phone calls through Twilio: the notice read aloud, then a keypress to confirm it was heard.

The TwiML goes inline with the request (``twiml=``), so the alert text is never put in a
URL. The call is ``sent`` when Twilio accepts it; ``herald serve`` records the person's
"1" (POST /twilio/gather) as acknowledged, and a call that ends unanswered, busy or without
confirmation as failed, which is what fallback acts on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from twilio.twiml.voice_response import VoiceResponse

from channels.base import Channel
from channels.twilio_provider import TwilioProvider, call_verdict, callback_url
from channels.voice import voice_for
from worker.config import Settings
from worker.core.contacts import check_phone
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.messages import OutboundMessage, Receipt
from worker.core.statuses import DeliveryStatus

PROMPTS = {
    "en": ("Press 1 to confirm you have heard this message.", "We did not receive a confirmation. Goodbye."),
    "zh-CN": ("如您已收听此通知，请按 1 确认。", "我们未收到您的确认。再见。"),
}


def build_twiml(text: str, locale: str, gather_url: str) -> str:
    """The call script: the notice with ``<Say>``, then ``<Gather>`` one digit; escaped by twilio."""
    voice, language = voice_for(locale)
    prompt, goodbye = PROMPTS.get(locale, PROMPTS["en"])
    response = VoiceResponse()
    response.say(text, voice=voice, language=language)
    gather = response.gather(num_digits=1, timeout=8, action=gather_url, method="POST")
    gather.say(prompt, voice=voice, language=language)
    response.say(goodbye, voice=voice, language=language)
    return str(response)


class PhoneChannel(Channel):
    """Voice calls that ask the person to press 1."""

    name = "phone"

    def __init__(self, settings: Settings, *, concurrency: int = 4, retry_initial_s: float = 0.2) -> None:
        self.settings = settings
        self._provider = TwilioProvider(
            settings,
            rate_per_second=settings.phone_rate_per_second,
            rate_key=f"phone:{settings.twilio_from}",
            retry_initial_s=retry_initial_s,
        )
        self._concurrency = concurrency
        base = settings.public_url.rstrip("/")
        self._status_url = f"{base}/twilio/voice-status"
        self._gather_url = f"{base}/twilio/gather"

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Receipt]:
        """Place every call; per-call failures come back as receipts."""
        gate = asyncio.Semaphore(self._concurrency)

        async def one(message: OutboundMessage) -> Receipt:
            async with gate:
                return await self._call_one(message)

        return list(await asyncio.gather(*(one(m) for m in messages)))

    async def _call_one(self, message: OutboundMessage) -> Receipt:
        checked = check_phone(message.recipient.phone)
        if checked.value is None:
            reason = checked.problem or "no phone number on record"
            return Receipt.failed(message.key, PermanentDeliveryError(reason, code="invalid-contact"), tries=0)
        twiml = build_twiml(message.content.text, message.content.locale, self._gather_url)
        params = {
            "to": checked.value,
            "from_": self.settings.twilio_from,
            "twiml": twiml,
            "status_callback": callback_url(self._status_url, message.key),
            "status_callback_event": ["initiated", "ringing", "answered", "completed"],
        }
        sid, error, tries = await self._provider.create(lambda client: client.calls.create_async(**params))
        if error is not None:
            return Receipt.failed(message.key, error, tries=tries)
        return Receipt(key=message.key, status=DeliveryStatus.SENT, provider_message_id=sid, tries=tries)

    async def fetch_verdict(self, provider_message_id: str) -> tuple[DeliveryStatus | None, DeliveryError | None]:
        """Ask Twilio for the call's status, for when its final callback never came."""
        status, _code = await self._provider.fetch_status("call", provider_message_id)
        return call_verdict(status)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._provider.aclose()
