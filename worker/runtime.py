"""What one worker process holds: its engine, renderer, routing policy and router, and per
thread an event loop with that thread's channels (each keeps its SMTP connections open
across batches) and its announcement publisher.

It is built lazily in each process, after dramatiq forks, so no connection crosses a fork.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Coroutine
from functools import cached_property
from typing import Any, TypeVar

from sqlalchemy import Engine

from channels import create_channel
from channels.announcement import AnnouncementChannel
from channels.base import Channel
from worker.announce.site import announcement_slug
from worker.config import Settings
from worker.delivery.rendering import Renderer
from worker.intake.events import Event
from worker.routing.chains import Router
from worker.routing.policy import RoutingPolicy, load_policy
from worker.store.engine import make_engine, read_only
from worker.store.intake import load_event

T = TypeVar("T")

#: Parsed events kept per process; an inline audience can make one event several megabytes.
_EVENT_CACHE_SIZE = 16


class Runtime:
    """Process-wide resources for the pipeline, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._threads: list[_ThreadState] = []
        self._events: OrderedDict[str, Event] = OrderedDict()

    @cached_property
    def engine(self) -> Engine:
        """The database engine (one pool per process)."""
        return make_engine(self.settings.resolved_database_url)

    @cached_property
    def renderer(self) -> Renderer:
        """The template renderer, with its caches."""
        return Renderer(
            self.settings.templates_dir,
            sms_max_segments=self.settings.sms_max_segments,
            details_url=self.settings.details_url or None,
        )

    @cached_property
    def policy(self) -> RoutingPolicy:
        """The routing policy, read once per process.

        Raises:
            ConfigurationError: the routing file is missing or wrong (naming the line).
        """
        return load_policy(self.settings.routing_file)

    @cached_property
    def router(self) -> Router:
        """Routing decisions, with each event's plan cached."""
        return Router(batch_size=self.settings.batch_size, slug=announcement_slug)

    def event(self, event_id: str) -> Event:
        """An accepted event, parsed at most once per process (accepted events never change).

        Raises:
            sqlalchemy.exc.NoResultFound: no event has that id.
        """
        with self._lock:
            cached = self._events.get(event_id)
            if cached is not None:
                self._events.move_to_end(event_id)
                return cached
        with read_only(self.engine) as conn:
            parsed = load_event(conn, event_id)
        with self._lock:
            self._events[event_id] = parsed
            while len(self._events) > _EVENT_CACHE_SIZE:
                self._events.popitem(last=False)
        return parsed

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState()
            self._local.state = state
            with self._lock:
                self._threads.append(state)
        return state

    def channel(self, name: str) -> Channel:
        """This thread's instance of a channel, over the providers the policy lists for it."""
        state = self._state()
        if name not in state.channels:
            rules = self.policy.channels[name]
            state.channels[name] = create_channel(
                name, self.settings, self.engine, providers=rules.providers, cooldown_s=rules.cooldown_s
            )
        return state.channels[name]

    def publisher(self) -> AnnouncementChannel:
        """This thread's announcement publisher."""
        state = self._state()
        if state.publisher is None:
            state.publisher = AnnouncementChannel(self.settings)
        return state.publisher

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this thread's event loop."""
        return self._state().loop.run_until_complete(coro)

    def close(self) -> None:
        """Close every channel and loop this runtime opened, then the engine's pool."""
        with self._lock:
            states, self._threads = self._threads, []
        for state in states:
            closers = [channel.aclose() for channel in state.channels.values()]
            if state.publisher is not None:
                closers.append(state.publisher.aclose())
            for closer in closers:
                try:
                    if not state.loop.is_closed() and not state.loop.is_running():
                        state.loop.run_until_complete(closer)
                    else:
                        closer.close()
                except Exception:  # closing is best effort; the process is going away
                    pass
            if not state.loop.is_running():
                state.loop.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


class _ThreadState:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.channels: dict[str, Channel] = {}
        self.publisher: AnnouncementChannel | None = None
