"""The engine's view of its collaborators and the commands other threads send it.

Protocols keep the step loop testable with fakes (``tests/fakes.py``); the
commands are what :class:`app.engine.scheduler.Engine`'s thread-safe queue carries.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.engine.events import Event, Job


class VocabLike(Protocol):
    """What the step loop needs of the model (:class:`app.engine.model.Model`)."""

    eog_ids: frozenset[int]

    def piece(self, token: int) -> bytes: ...


class ContextLike(Protocol):
    """What the step loop needs of the context (:class:`app.engine.context.Context`)."""

    n_ctx: int
    n_batch: int
    n_seq_max: int

    @property
    def n_rows(self) -> int: ...

    @property
    def raw(self) -> Any: ...

    def clear_batch(self) -> None: ...

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int: ...

    def decode(self) -> int: ...

    def abort_decode(self) -> None: ...

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool: ...

    def seq_clear(self, seq: int) -> None: ...

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None: ...

    def save_seq(self, seq: int, path: str, tokens: list[int]) -> int: ...

    def load_seq(self, seq: int, path: str, capacity: int) -> list[int] | None: ...

    def get_seq_state(self, seq: int) -> bytearray | None: ...

    def set_threads(self, n: int) -> None: ...

    def set_seq_state(self, seq: int, data: bytearray) -> bool: ...


class LoraLike(Protocol):
    """The loaded LoRA adapters (:class:`app.engine.lora.Adapters`)."""

    def apply(self, ctx: Any, scales: tuple[float, ...]) -> None:
        """Make ``scales`` the context's adapters (``()``: none)."""
        ...


class Outbox(Protocol):
    """Hands events to requests; called on the engine thread, must not block.

    A request whose receiver is gone is reported back with :meth:`Engine.cancel`.
    """

    def post(self, items: Sequence[tuple[Job, Event]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Submit:
    job: Job


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: int


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Wake:
    """A grammar step finished off the thread: look at it now rather than after a poll."""


@dataclass(frozen=True, slots=True)
class SlotOp:
    kind: str  # "save" | "restore" | "erase"
    slot_id: int
    path: str
    future: concurrent.futures.Future[dict[str, int]]
    identity: str = ""  # the model's fingerprint, written beside a saved file and checked


class EngineStopped(Exception):
    """The engine thread is not running (stopped, or died): the command was not carried out."""


class SlotBusy(Exception):
    """A slot action on a slot that is processing a request."""


class SlotFileError(Exception):
    """A slot state file that could not be written or read."""


Command = Submit | Cancel | Stop | SlotOp | Wake
