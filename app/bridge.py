"""The Trio side of the engine's delivery: events posted into bounded channels.

The engine thread posts each step's events with :class:`TrioOutbox`, which
schedules their delivery on the Trio loop without waiting for it. Each request's
memory channel holds ``CHANNEL_CAPACITY`` events and the engine never has more
than that in flight for one request (it pauses the request's slot instead), so
a delivery never blocks; a receiver that is gone is reported to the engine,
which frees the slot. Reading the channel is :class:`app.running.Completion`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from app.engine.events import Event, Job

__all__ = ["TrioOutbox"]

log = logging.getLogger(__name__)


class TrioOutbox:
    """Implements :class:`app.engine.scheduler.Outbox` for a Trio event loop."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self.on_gone: Callable[[int], None] = lambda job_id: None

    def post(self, items: Sequence[tuple[Job, Event]]) -> None:
        try:
            self._token.run_sync_soon(self.deliver, items)
        except trio.RunFinishedError:
            for job_id in {job.id for job, _ in items}:
                self.on_gone(job_id)

    def deliver(self, items: Sequence[tuple[Job, Event]]) -> None:
        """Put events into their requests' channels (on the Trio thread)."""
        gone: set[int] = set()
        for job, event in items:
            if job.id in gone:
                continue
            channel: trio.MemorySendChannel[Event] = job.sink  # type: ignore[assignment]
            try:
                channel.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.add(job.id)
                self.on_gone(job.id)
            except trio.WouldBlock:  # the engine's in-flight bound makes this unreachable
                log.error("channel of request %d overflowed; ending it", job.id)
                gone.add(job.id)
                self.on_gone(job.id)
