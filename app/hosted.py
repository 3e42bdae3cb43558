"""One known model's state, and the moves between its statuses as one table.

A model's status changes only through :meth:`Hosted.apply`, which refuses a move the
table does not hold (a bug, raised as :class:`IllegalMove`): the five statuses and the
nine events that move between them are all here, not scattered over the registry.

::

    unloaded --load--> loading --loaded--> loaded --unload--> unloading --unloaded--> unloaded
    failed   --load--> loading --failed--> failed              unloading --drain_timeout--> loaded
                       loading --cancelled--> unloaded
    unloaded --adopt--> loaded           (a model loaded before the server started)
    any      --close--> unloaded         (at exit, after the engines stopped)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from app.discovery import ModelSpec
from app.runtime import Facts, RuntimeLike


class ModelStatus(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


class Event(enum.Enum):
    LOAD = "load"  # a load starts
    LOADED = "loaded"  # the load finished
    FAILED = "failed"  # the load raised
    CANCELLED = "cancelled"  # nobody waited any more; the loader stopped
    ADOPT = "adopt"  # a runtime loaded before the registry ran
    UNLOAD = "unload"  # eviction, idle, keep_alive 0 or an explicit unload starts
    DRAIN_TIMEOUT = "drain_timeout"  # operations still held it: it stays loaded
    UNLOADED = "unloaded"  # its memory was freed
    CLOSE = "close"  # exit: freed at once, whatever it was doing


_S, _E = ModelStatus, Event

#: (status, event) -> the next status; a pair not here is an illegal move
MOVES: dict[tuple[ModelStatus, Event], ModelStatus] = {
    (_S.UNLOADED, _E.LOAD): _S.LOADING,
    (_S.FAILED, _E.LOAD): _S.LOADING,
    (_S.LOADING, _E.LOADED): _S.LOADED,
    (_S.LOADING, _E.FAILED): _S.FAILED,
    (_S.LOADING, _E.CANCELLED): _S.UNLOADED,
    (_S.UNLOADED, _E.ADOPT): _S.LOADED,
    (_S.LOADED, _E.UNLOAD): _S.UNLOADING,
    (_S.UNLOADING, _E.DRAIN_TIMEOUT): _S.LOADED,
    (_S.UNLOADING, _E.UNLOADED): _S.UNLOADED,
    **{(status, _E.CLOSE): _S.UNLOADED for status in ModelStatus},
}


class IllegalMove(RuntimeError):
    """A status change the table does not allow (a registry bug, never a client's)."""


@dataclass(eq=False)
class Hosted:
    """One known model's state (Trio thread only, except ``cancel_load``, read by the loader)."""

    spec: ModelSpec
    status: ModelStatus = ModelStatus.UNLOADED
    runtime: RuntimeLike | None = None
    error: str = ""
    last_used: float = -math.inf
    keep_alive_s: float | None = None  # the latest request's keep_alive; None: the server's
    waiting: int = 0  # requests waiting for it to load
    pinned: bool = False  # an explicit load is waiting: do not cancel for want of waiters
    cancel_load: bool = False
    loads: int = 0
    unloads: int = 0
    failures: int = 0
    load_s: float = 0.0  # how long the last load took
    expires_at: float = math.inf  # Trio clock: when the idle watcher unloads it
    facts: Facts | None = None  # the latest runtime's, kept after an unload (sleeping)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def busy(self) -> bool:
        return self.waiting > 0 or (self.runtime is not None and self.runtime.leases.count > 0)

    def apply(self, event: Event) -> ModelStatus:
        """Move to the status ``event`` leads to from this one, and return it.

        Raises:
            IllegalMove: the table has no such move from the current status.
        """
        new = MOVES.get((self.status, event))
        if new is None:
            raise IllegalMove(f"model {self.name!r}: no move {event.value!r} from "
                              f"{self.status.value!r}")
        self.status = new
        return new


class Room(enum.Enum):
    """Whether a model that is not loaded may start loading now."""

    NOW = "now"  # a place is free
    SOON = "soon"  # an unload runs (perhaps just started for the least recently used model)
    BLOCKED = "blocked"  # every loaded model is busy


#: the statuses that hold one of ``--models-max``'s places (an unloading model's memory
#: is not freed yet)
HOLDS_A_PLACE = frozenset({ModelStatus.LOADED, ModelStatus.LOADING, ModelStatus.UNLOADING})


def room_for(wanted: Hosted, models: list[Hosted], max_loaded: int
             ) -> tuple[Room, Hosted | None]:
    """Whether ``wanted`` may load beside ``models`` when at most ``max_loaded`` are
    loaded, and the model to unload for it (the least recently used idle one) if any."""
    if sum(1 for h in models if h.status in HOLDS_A_PLACE) < max_loaded:
        return Room.NOW, None
    if any(h.status is ModelStatus.UNLOADING for h in models):
        return Room.SOON, None
    idle = [h for h in models if h is not wanted and h.status is ModelStatus.LOADED and not h.busy]
    if not idle:
        return Room.BLOCKED, None
    return Room.SOON, min(idle, key=lambda h: h.last_used)
