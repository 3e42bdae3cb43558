"""Fakes behind the engine's and the service's protocols: no model, no sockets, no threads.

``FakeModel`` tokenizes one character per token (id = code point + 10) and
renders pieces back; ``FakeSampler`` replays a script of token ids, then EOS;
``FakeContext`` records batches. ``FakeRuntime`` runs the real scheduler
(:class:`app.engine.scheduler.Engine`) on these, stepped by a Trio task
(:func:`drive`) instead of its thread, so tests run under ``autojump_clock``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from app.bridge import TrioOutbox
from app.chat import select
from app.completion import SamplingParams
from app.engine.model import ModelInfo
from app.engine.sampling import Sampled
from app.engine.scheduler import Engine
from app.runtime import Leases

EOS = 1
BOS = 2
OFFSET = 10  # token id of a character: its code point + OFFSET


class FakeModel:
    eog_ids = frozenset({EOS})
    n_vocab = 0x110000 + OFFSET

    def __init__(self) -> None:
        self.info = ModelInfo(path=Path("fake.gguf"), architecture="fake", description="fake",
                              n_vocab=self.n_vocab, n_ctx_train=4096, n_params=0, size_bytes=0,
                              bos=BOS, eos=EOS, add_bos=True, chat_template=None)

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]:
        return [ord(c) + OFFSET for c in text]

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    def piece(self, token: int) -> bytes:
        return chr(token - OFFSET).encode() if token >= OFFSET else b""

    def token_text(self, token: int) -> str:
        return self.piece(token).decode()

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode()

    def fim_tokens(self) -> tuple[int, int, int] | None:
        return None

    def fim_repo_tokens(self) -> tuple[int, int]:
        return -1, -1


class FakeContext:
    def __init__(self, n_batch: int = 8, n_seq_max: int = 4, n_ctx: int = 4096) -> None:
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.n_ctx = n_ctx
        self.rows: list[tuple[int, int, int, bool]] = []
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.removed: list[tuple[int, int]] = []
        self.shifted: list[tuple[int, int, int, int]] = []  # seq_add calls
        self.threads: list[int] = []  # thread counts set, in order
        self.saved: list[int] = []  # sequences whose state was copied out
        self.restored: list[tuple[int, str]] = []  # (sequence, which state) copied in
        self.raw = None
        #: positions each sequence holds (None: unknown, after a state was copied in); as
        #: llama.cpp's memory does, a batch must continue a sequence where it ends
        self.held: dict[int, int | None] = {}
        #: called in the middle of each decode (a test's other thread, cancelling a job)
        self.during_decode: Callable[[], None] | None = None
        self.aborting = False
        self.aborted = 0  # decodes that returned 2

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    def clear_batch(self) -> None:
        self.rows = []

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        assert len(self.rows) < self.n_batch
        self.rows.append((token, pos, seq, logits))
        return len(self.rows) - 1

    def decode(self) -> int:
        self.batches.append(list(self.rows))
        if self.during_decode is not None:
            self.during_decode()
        if self.aborting:  # as llama.cpp: stopped at a graph node, nothing of the batch kept
            self.aborting = False
            self.aborted += 1
            return 2
        held = dict(self.held)
        for _token, pos, seq, _logits in self.rows:
            end = held.get(seq, 0)
            if end is not None and pos != end:
                return -1  # llama.cpp: "inconsistent sequence positions"
            held[seq] = pos + 1
        self.held = held
        return 0

    def abort_decode(self) -> None:
        self.aborting = True

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        self.removed.append((seq, p0))
        end = self.held.get(seq, 0)
        if p1 < 0 and end is not None:
            self.held[seq] = min(end, max(p0, 0))
        elif p1 >= 0:
            self.held[seq] = None  # a hole: shifted back by a seq_add, or not
        return True

    def seq_clear(self, seq: int) -> None:
        self.removed.append((seq, 0))
        self.held[seq] = 0

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.shifted.append((seq, p0, p1, delta))
        self.held[seq] = None

    def save_seq(self, seq: int, path: str, tokens: list[int]) -> int:
        return 0

    def load_seq(self, seq: int, path: str, capacity: int) -> list[int] | None:
        self.held[seq] = None
        return None

    def set_threads(self, n: int) -> None:
        self.threads.append(n)

    def get_seq_state(self, seq: int) -> bytearray | None:
        self.saved.append(seq)
        return bytearray(f"state of {seq}".encode().ljust(64))

    def set_seq_state(self, seq: int, data: bytearray) -> bool:
        self.restored.append((seq, bytes(data).strip().decode()))
        self.held[seq] = None
        return True


class FakeSampler:
    """Emits ``script`` (token ids), then EOS; or tokens 100, 101, ... for ``length`` steps."""

    def __init__(self, script: Sequence[int] | None = None, length: int = 1000) -> None:
        self.script = list(script) if script is not None else None
        self.length = length
        self.n = 0
        self.closed = False
        self.rejections = 0
        self.full_passes = 0
        self.narrowed_passes = 0

    def sample(self, ctx: Any, row: int) -> Sampled:
        self.n += 1
        if self.script is not None:
            return Sampled(token=self.script[self.n - 1] if self.n <= len(self.script) else EOS)
        return Sampled(token=EOS if self.n > self.length else 99 + self.n)

    def close(self) -> None:
        self.closed = True


def text_script(text: str) -> list[int]:
    return [ord(c) + OFFSET for c in text]


class DrivenEngine(Engine):
    """The real scheduler, stepped by :func:`drive` on the Trio thread."""

    alive = True  # type: ignore[assignment]


@dataclass(eq=False)
class FakeRuntime:
    """A :class:`app.runtime.RuntimeLike` over the fakes.

    ``sampler_factory`` builds each request's sampler (raise from it to play a
    grammar llama.cpp refuses); every sampler built is kept in ``samplers``.
    """

    n_slots: int = 2
    slot_ctx: int = 256
    sampler_factory: Callable[[SamplingParams, str | None], Any] = (
        lambda params, grammar: FakeSampler(text_script("hello world")))
    model: FakeModel = field(default_factory=FakeModel)
    samplers: list[Any] = field(default_factory=list)
    closed: bool = False
    embedder: None = None
    leases: Leases = field(default_factory=Leases)
    lora: None = None

    def __post_init__(self) -> None:
        self.context = FakeContext(n_seq_max=self.n_slots)
        self.outbox = TrioOutbox(trio.lowlevel.current_trio_token())
        self.engine = DrivenEngine(self.model, self.context, self.outbox, n_slots=self.n_slots,
                                   slot_ctx=self.slot_ctx)
        self.outbox.on_gone = self.engine.cancel
        self.chat = select(file=None, name="chatml", gguf_template=None, architecture="fake",
                           bos_token="", eos_token="")

    def new_sampler(self, params: SamplingParams, grammar: str | None, parsed: Any = None) -> Any:
        sampler = self.sampler_factory(params, grammar)
        self.samplers.append(sampler)
        return sampler

    def close(self) -> None:
        self.closed = True


async def drive(engine: Engine, step_s: float = 0.01) -> None:
    """Step the scheduler forever (cancel the surrounding scope to stop)."""
    while True:
        engine.run_once()
        await trio.sleep(step_s)
