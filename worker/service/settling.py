"""Callbacks that beat their delivery's record, applied by `herald serve` once the record exists.

The worker applies a waiting callback itself when it records the provider id, so this only
closes the window in which the two commit at the same moment. It is kept cheap: one task
per provider id at a time, at most ``max_tasks`` in flight, a read after each pause (the
pauses double), and a write only once the delivery is there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

log = logging.getLogger("herald.http")

#: Settle tasks one `herald serve` process keeps at most; beyond it the worker's record applies them.
SETTLE_TASKS_MAX = 500
FIRST_PAUSE_S = 0.5


def pauses(total_s: float, first_s: float = FIRST_PAUSE_S) -> list[float]:
    """Pauses that double from ``first_s`` and add up to ``total_s`` (the last one shortened)."""
    found: list[float] = []
    pause, left = first_s, total_s
    while left > 1e-9:
        found.append(min(pause, left))
        left -= found[-1]
        pause *= 2
    return found


class Settler:
    """Waits, per provider id, for a delivery to be recorded, then applies its waiting callbacks.

    Args:
        within_s: how long to keep looking for the record (``HERALD_CALLBACK_SETTLE_S``).
        state: in a worker thread, None when nothing waits any more for this id, else whether
            its delivery is recorded; a read, no write.
        apply: in a worker thread, applies the id's waiting callbacks (one write transaction).
        max_tasks: ids looked after at once.
    """

    def __init__(
        self,
        *,
        within_s: float,
        state: Callable[[str], bool | None],
        apply: Callable[[str], None],
        max_tasks: int = SETTLE_TASKS_MAX,
    ) -> None:
        self.within_s = within_s
        self.state = state
        self.apply = apply
        self.max_tasks = max_tasks
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._full = False

    @property
    def in_flight(self) -> int:
        """How many provider ids are being looked after now."""
        return len(self._tasks)

    def schedule(self, sid: str) -> None:
        """Look after this provider id, unless it is already looked after; call on the event loop."""
        if self.within_s <= 0 or sid in self._tasks:
            return
        if len(self._tasks) >= self.max_tasks:
            if not self._full:
                log.warning("%d callbacks wait for their record; the worker applies the rest on record", self.max_tasks)
            self._full = True
            return
        self._full = False
        task = asyncio.get_running_loop().create_task(self._settle(sid), name=f"settle-{sid}")
        self._tasks[sid] = task
        task.add_done_callback(lambda _done: self._tasks.pop(sid, None))

    def cancel_all(self) -> None:
        """Stop looking (shutdown); the callbacks stay stored for the worker."""
        for task in list(self._tasks.values()):
            task.cancel()

    async def _settle(self, sid: str) -> None:
        for pause in pauses(self.within_s):
            await asyncio.sleep(pause)
            try:
                recorded = await run_in_threadpool(self.state, sid)
                if recorded is None:
                    return  # applied meanwhile (by the worker's record)
                if recorded:
                    await run_in_threadpool(self.apply, sid)
                    return
            except Exception as exc:  # the worker applies the stored callback on record anyway
                log.warning("callback for %s not applied yet: %s", sid, type(exc).__name__)
                return
        log.warning("callback for %s still has no recorded delivery; the worker will apply it on record", sid)
