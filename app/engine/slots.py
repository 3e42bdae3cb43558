"""A slot's state, what /slots reports of it, and the engine's counters."""

from __future__ import annotations

import collections
import concurrent.futures
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.engine.events import Event, Job
from app.engine.sampling import Sampled
from app.engine.text import Detokenizer, IndentWatch, StopMatcher


class SlotState(enum.Enum):
    IDLE = "idle"
    PROMPT = "prompt"
    GENERATE = "generate"
    SAMPLING = "sampling"  # a grammar step is being finished off the engine thread


@dataclass(eq=False)
class Slot:
    id: int
    n_ctx: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV is in sequence `id`
    cache_lora: tuple[float, ...] = ()  # the LoRA scales that KV was computed with
    state: SlotState = SlotState.IDLE
    job: Job | None = None
    next_prompt: int = 0  # index of the next prompt token to evaluate
    pending: int = -1  # sampled token to feed at the next step
    sampling: concurrent.futures.Future[Sampled] | None = None  # an open grammar step
    sampling_since: float = 0.0
    n_decoded: int = 0
    shifted: bool = False  # the context was shifted during this request
    tokens_cached: int = 0
    outbox: collections.deque[Event] = field(default_factory=collections.deque)
    detok: Detokenizer = field(default_factory=Detokenizer)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    indent: IndentWatch = field(default_factory=lambda: IndentWatch(0))
    new_line: bool = False  # a newline was generated (t_max_predict_ms counts from then on)
    t_start: float = 0.0
    t_prompt: float = 0.0
    last_used: float = 0.0

    @property
    def n_past(self) -> int:
        return len(self.cache)

    def info(self) -> SlotInfo:
        job = self.job
        return SlotInfo(id=self.id, n_ctx=self.n_ctx, is_processing=job is not None,
                        state=self.state.value, id_task=job.id if job is not None else -1,
                        n_cached=len(self.cache), n_decoded=self.n_decoded,
                        n_prompt=len(job.request.prompt) if job else 0)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    id: int
    n_ctx: int
    is_processing: bool
    state: str
    id_task: int
    n_cached: int
    n_decoded: int
    n_prompt: int


@dataclass
class Counters:
    """Monotonic counters for /metrics (written by the engine thread only)."""

    prompt_tokens_total: int = 0
    tokens_predicted_total: int = 0
    decode_calls_total: int = 0
    requests_total: int = 0  # submitted
    requests_started_total: int = 0  # got a slot
    requests_dropped_queued_total: int = 0  # cancelled before they got a slot
    busy_slots_total: int = 0  # summed over decode calls
    context_shifts_total: int = 0
    prompt_tokens_cached_total: int = 0  # prompt tokens taken from a cache, not evaluated
    prompt_seconds_total: float = 0.0  # time requests spent on their prompts
    predicted_seconds_total: float = 0.0  # ... and generating after the first token
    n_tokens_max: int = 0  # the most cells a slot has held
    cache_reused_tokens_total: int = 0  # moved into place by --cache-reuse


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
