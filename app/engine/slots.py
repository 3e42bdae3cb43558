"""A slot's state, what /slots reports of it, and the engine's counters."""

from __future__ import annotations

import collections
import concurrent.futures
import enum
from dataclasses import dataclass, field

from app.engine.events import Done, Event, Job, Progress, Started, StopType
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

    def begin(self, job: Job, keep: int, now: float) -> None:
        """Take ``job``, the first ``keep`` tokens of whose prompt the cache holds already
        (:func:`app.engine.placement.place` made it so); the next step reads the rest."""
        req = job.request
        self.job = job
        self.state = SlotState.PROMPT
        self.next_prompt = keep
        self.tokens_cached = keep
        self.pending = -1
        self.n_decoded = 0
        self.shifted = False
        self.outbox.clear()
        self.detok = Detokenizer()
        self.stops = StopMatcher(req.stops)
        self.indent = IndentWatch(req.n_indent)
        self.new_line = False
        self.t_start = self.t_prompt = now
        self.outbox.append(Started(id_slot=self.id, tokens_cached=keep))
        if req.return_progress:
            self.outbox.append(Progress(len(req.prompt), keep, keep, 0.0))

    def read_prompt(self, rows: int, now: float, counters: Counters) -> bool:
        """The next ``rows`` prompt tokens were decoded; True when that was the last of them
        (the slot generates from now on)."""
        assert self.job is not None
        req = self.job.request
        self.cache.extend(req.prompt[self.next_prompt:self.next_prompt + rows])
        self.next_prompt += rows
        counters.prompt_tokens_total += rows
        if req.return_progress:
            self.outbox.append(Progress(len(req.prompt), self.tokens_cached, self.next_prompt,
                                        (now - self.t_start) * 1000.0))
        if self.next_prompt < len(req.prompt):
            return False
        self.state = SlotState.GENERATE
        self.t_prompt = now
        return True

    def done(self, stop_type: StopType, *, word: str, truncated: bool, now: float,
             counters: Counters) -> Done:
        """The last event of the job, with its figures (counted in ``counters`` too)."""
        job = self.job
        assert job is not None
        prompt_n = len(job.request.prompt)
        counters.prompt_tokens_cached_total += self.tokens_cached
        counters.prompt_seconds_total += self.t_prompt - self.t_start
        if self.n_decoded:
            counters.predicted_seconds_total += now - self.t_prompt
        counters.n_tokens_max = max(counters.n_tokens_max, self.n_past)
        return Done(
            stop_type=stop_type, stopping_word=word, tokens_predicted=self.n_decoded,
            tokens_evaluated=prompt_n, tokens_cached=self.tokens_cached,
            truncated=truncated or self.shifted, id_slot=self.id,
            prompt_ms=(self.t_prompt - self.t_start) * 1000.0,
            predicted_ms=(now - self.t_prompt) * 1000.0 if self.n_decoded else 0.0,
            prompt_n=prompt_n - self.tokens_cached,
            grammar_rejections=job.sampler.rejections,
            grammar_full_passes=job.sampler.full_passes,
            grammar_narrowed_passes=job.sampler.narrowed_passes)

    def release(self, now: float) -> None:
        """Give up the job (finished, failed or dropped); the cells stay as a prompt cache.
        Its sampler is freed now, or when a grammar worker still using it is done."""
        if self.job is not None:
            sampler = self.job.sampler
            if self.sampling is not None:
                self.sampling.add_done_callback(lambda _f: sampler.close())
            else:
                sampler.close()
        self.sampling = None
        self.job = None
        self.state = SlotState.IDLE
        self.outbox.clear()
        self.last_used = now

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
