"""herald's HTTP app (``herald serve``): Twilio status callbacks, the public announcements, health.

Every Twilio request is checked against ``X-Twilio-Signature`` computed over the public URL
(``HERALD_PUBLIC_URL`` + path), not the URL this process happens to see behind a proxy. An
unsigned request gets 403 before its body is read, a body over ``callback_max_bytes`` gets
413 while it streams, and a wrongly signed request gets 403; none of them changes anything.

Callbacks join deliveries on the provider's SID, and statuses only move forward. A callback
that settles a person's stage (an SMS undelivered, a call unanswered) moves them down their
chain right here, in the same transaction, and the next stage's batches are handed to the
broker. One that beat its delivery's record is stored once and looked after by a
``Settler`` until the record exists.

``/announcements`` serves the static announcement site exactly as it was published.
Ingest, the inbox and metrics join this app in later issues.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import dramatiq
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from channels.twilio_provider import call_verdict, key_in_callback, message_verdict
from worker.announce.site import announcement_slug
from worker.broker import build_broker
from worker.config import Settings
from worker.core.clock import utcnow
from worker.core.errors import PermanentDeliveryError
from worker.core.messages import DeliveryKey
from worker.core.statuses import DeliveryStatus
from worker.fanout.outbox import Dispatch, enqueue
from worker.routing.chains import Router
from worker.service.settling import SETTLE_TASKS_MAX, Settler
from worker.store.callbacks import apply_pending_callbacks, callbacks_waiting, receive_provider_status
from worker.store.deliveries import adopt_provider_id, adoptable
from worker.store.engine import make_engine, read_only
from worker.store.moves import Move
from worker.store.outcomes import is_recorded

log = logging.getLogger("herald.http")

THANKS = "Thank you. Your confirmation has been recorded. Goodbye."


class PublicSite(StaticFiles):
    """The published announcement site; the publishers' lock files (dot files) are not part of it.

    A folder that is not there (not yet published, or something else stands in its place)
    answers 404 instead of failing: the rest of the app keeps serving.
    """

    async def check_config(self) -> None:
        """Nothing to check up front: the folder may appear (or be repaired) at any time."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if any(part.startswith(".") and part != "." for part in path.split("/")):
            return "", None
        if self.directory is None or not os.path.isdir(self.directory):
            return "", None
        return super().lookup_path(path)


async def capped_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to be longer than ``limit``.

    A declared Content-Length over the limit is refused before anything is read; the bytes
    that do arrive are counted too, since a chunked body declares no length.
    """
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(settings: Settings, engine: Engine | None = None, broker: dramatiq.Broker | None = None) -> Starlette:
    """The ASGI app, bound to one database, one broker and one Twilio auth token."""
    db = engine or make_engine(settings.resolved_database_url)
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    public = settings.public_url.rstrip("/")
    router = Router(batch_size=settings.batch_size, slug=announcement_slug)
    owned: list[dramatiq.Broker] = []  # built on first use, closed at shutdown

    def hand_on(dispatch: Dispatch) -> None:
        """Enqueue what routing decided; if Redis is away, the dead-man check sends it later."""
        if not dispatch:
            return
        if broker is None and not owned:
            owned.append(build_broker(settings))
        try:
            enqueue(broker or owned[0], dispatch)
        except Exception as exc:  # the decision is committed; the sweep re-sends pending rows
            log.warning("could not enqueue the next stage now (%s); the dead-man check will", type(exc).__name__)

    async def signed_form(request: Request) -> dict[str, str] | Response:
        """The request's form if Twilio signed it, else the refusal to send.

        Nothing is read of a request without a signature, and no more than
        ``callback_max_bytes`` of one with a signature: an unauthenticated client cannot
        make this process hold a large body.
        """
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature:
            log.warning("refused an unsigned request to %s", request.url.path)
            return PlainTextResponse("invalid signature", status_code=403)
        body = await capped_body(request, settings.callback_max_bytes)
        if body is None:
            log.warning("refused a request to %s over %d bytes", request.url.path, settings.callback_max_bytes)
            return PlainTextResponse("request body too large", status_code=413)
        params = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        url = public + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if not validator.validate(url, params, signature):
            log.warning("refused a wrongly signed request to %s", request.url.path)
            return PlainTextResponse("invalid signature", status_code=403)
        return params

    #: The delivery key each waiting callback's URL named (see ``channels.twilio_provider.callback_url``).
    named: dict[str, DeliveryKey] = {}

    def apply(
        sid: str, status: DeliveryStatus | None, error: PermanentDeliveryError | None, key: DeliveryKey | None
    ) -> Move | bool | None:
        """Apply a callback (``status`` None: only learn the id); None when it must wait for its record."""
        with db.begin() as conn:
            result = receive_provider_status(conn, sid, status, error) if status is not None else None
            moves = [result] if isinstance(result, Move) else []
            if result is None and key is not None:
                # A send whose answer herald could not read: the callback names it, so it was sent.
                adopted = adopt_provider_id(conn, key, sid)
                if adopted is not None:
                    log.info("message %s settles a send whose outcome was unknown", sid)
                    moves, result = adopted, True
            dispatch = router.after_moves(conn, moves, utcnow())
        hand_on(dispatch)
        return result

    def waiting_state(sid: str) -> bool | None:
        with read_only(db) as conn:
            if not callbacks_waiting(conn, sid):
                named.pop(sid, None)
                return None
            key = named.get(sid)
            return is_recorded(conn, sid) or (key is not None and adoptable(conn, key))

    def apply_waiting(sid: str) -> None:
        key = named.pop(sid, None)
        with db.begin() as conn:
            if is_recorded(conn, sid) or key is None:
                moves = apply_pending_callbacks(conn, [sid])
            else:
                moves = adopt_provider_id(conn, key, sid) or []
            dispatch = router.after_moves(conn, moves, utcnow())
        hand_on(dispatch)

    settler = Settler(within_s=settings.callback_settle_s, state=waiting_state, apply=apply_waiting)

    async def applied(
        sid: str, status: DeliveryStatus | None, error: PermanentDeliveryError | None, key: DeliveryKey | None
    ) -> Move | bool | None:
        """Apply a callback; one that beat its delivery's record is looked after until it applies."""
        result = await run_in_threadpool(apply, sid, status, error, key)
        if result is None and status is not None:
            if key is not None and len(named) < 4 * SETTLE_TASKS_MAX:
                named[sid] = key
            settler.schedule(sid)
        return result

    async def message_status(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        sid, reported = params.get("MessageSid", ""), params.get("MessageStatus", "").lower()
        status, error = message_verdict(reported, params.get("ErrorCode"))
        if not sid or status is None:
            return PlainTextResponse("unknown message status", status_code=400)
        log.info("message %s reported %s", sid, reported)
        key = key_in_callback(request.query_params, "sms")
        if status is DeliveryStatus.SENT:
            # The worker recorded "sent" itself when Twilio accepted it, unless it could not read the answer.
            if key is not None:
                await run_in_threadpool(apply, sid, None, None, key)
            return Response(status_code=204)
        await applied(sid, status, error, key)
        return Response(status_code=204)

    async def voice_status(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        sid, reported = params.get("CallSid", ""), params.get("CallStatus", "").lower()
        if not sid or not reported:
            return PlainTextResponse("CallSid and CallStatus are required", status_code=400)
        log.info("call %s reported %s", sid, reported)
        status, error = call_verdict(reported)
        key = key_in_callback(request.query_params, "phone")
        if status is None:
            if key is not None:  # ringing or in progress: the call was placed, whatever its answer said
                await run_in_threadpool(apply, sid, None, None, key)
            return Response(status_code=204)
        await applied(sid, status, error, key)
        return Response(status_code=204)

    async def gather(request: Request) -> Response:
        params = await signed_form(request)
        if isinstance(params, Response):
            return params
        sid, digits = params.get("CallSid", ""), params.get("Digits", "")
        response = VoiceResponse()
        if sid and digits == "1":
            await applied(sid, DeliveryStatus.ACKNOWLEDGED, None, None)
            response.say(THANKS)
        else:
            response.say("That key was not recognised. Goodbye.")
        return Response(str(response), media_type="application/xml")

    async def health(_request: Request) -> Response:
        def ping() -> dict[str, Any]:
            with db.connect() as conn:
                conn.execute(text("SELECT 1"))
            return {"status": "ok"}

        try:
            return JSONResponse(await run_in_threadpool(ping))
        except Exception as exc:  # any database failure makes the service unhealthy
            return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)

    site = settings.resolved_announcements_dir
    try:
        site.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the publishers report it and try again; serving goes on
        reason = exc.strerror or type(exc).__name__
        log.warning("announcement site folder cannot be created (%s); it is served once it exists", reason)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        settler.cancel_all()
        for opened in owned:
            opened.close()

    return Starlette(
        routes=[
            Route("/twilio/status", message_status, methods=["POST"]),
            Route("/twilio/voice-status", voice_status, methods=["POST"]),
            Route("/twilio/gather", gather, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Mount("/announcements", app=PublicSite(directory=site, html=True, check_dir=False), name="announcements"),
        ],
        lifespan=lifespan,
    )
