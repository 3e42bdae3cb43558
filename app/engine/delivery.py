"""Posting a step's events to the requests, with at most CHANNEL_CAPACITY in flight each.

A request's events wait in its slot's outbox while the request side has not
consumed enough of the earlier ones (the slot pauses meanwhile); events of
requests that already left their slot wait here until delivered.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

from app.engine.events import CHANNEL_CAPACITY, Event, Job
from app.engine.ports import Outbox
from app.engine.slots import Slot


class Delivery:
    """Owned by the engine thread."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        #: job id -> the job and its undelivered events, once it no longer holds a slot
        self.finishing: dict[int, tuple[Job, collections.deque[Event]]] = {}

    def finish(self, job: Job, events: Iterable[Event]) -> None:
        """Keep ``events`` of a job that leaves its slot until they are delivered."""
        self.finishing[job.id] = (job, collections.deque(events))

    def flush(self, slots: Sequence[Slot]) -> None:
        """Post what each request has room for, in one call to the outbox."""
        batch: list[tuple[Job, Event]] = []
        for busy in slots:
            if busy.job is not None and busy.outbox:
                self._take(busy.job, busy.outbox, batch)
        for job_id, (job, events) in list(self.finishing.items()):
            self._take(job, events, batch)
            if not events:
                del self.finishing[job_id]
        if batch:
            self._outbox.post(batch)

    @staticmethod
    def _take(job: Job, events: collections.deque[Event], batch: list[tuple[Job, Event]]) -> None:
        room = CHANNEL_CAPACITY - (job.posted - job.consumed)
        n = min(room, len(events))
        for _ in range(n):
            batch.append((job, events.popleft()))
        job.posted += n
