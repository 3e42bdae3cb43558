"""What the engine tells a request: frozen messages, dispatched with ``match``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.completion import StopType
from app.engine.sampling import Sampled, TokenProb

__all__ = ["CHANNEL_CAPACITY", "Done", "Event", "Failed", "GenerationRequest", "Job", "Progress",
           "SamplerLike", "Started", "StopType", "Token", "TokenInfo"]


class SamplerLike(Protocol):
    """What the engine needs of a request's sampler (:class:`app.engine.sampling.Sampler`)."""

    rejections: int
    full_passes: int
    narrowed_passes: int

    def sample(self, ctx: Any, row: int) -> Sampled | None:
        """The next token; None when the step must be finished by :meth:`resolve`."""
        ...

    def resolve(self) -> Sampled:
        """Finish an open step (any thread; the engine leaves the sampler alone meanwhile)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, tokenized and validated, ready for a slot."""

    prompt: tuple[int, ...]
    n_predict: int = -1  # -1: until end of generation or the slot's context; 0: prompt only
    stops: tuple[str, ...] = ()
    cache_prompt: bool = True
    id_slot: int = -1  # -1: any slot
    # context shift (when the engine has it on): prompt tokens kept at the front (-1: the
    # whole prompt), and how many after them go per shift (0: half of what is left)
    n_keep: int = 0
    n_discard: int = 0
    return_progress: bool = False  # a Progress event per prompt chunk
    n_cache_reuse: int = 0  # reuse cached chunks this long or longer by shifting them (0: off)
    lora: tuple[float, ...] = ()  # the LoRA adapters' scales (``()``: none in use)
    n_indent: int = 0  # end at a later line indented less than this (code completion)
    t_max_predict_ms: int = 0  # once a newline was generated, end after this long generating
    #: fed each piece of the reply's text on the engine thread; True ends the reply there, as
    #: the model's own end would (a tool-call reply that repeats a call: app/tools.py)
    ends: Callable[[str], bool] | None = field(default=None, compare=False)


#: events a request may have posted but not yet consumed; its slot pauses beyond this
CHANNEL_CAPACITY = 64


@dataclass(eq=False)
class Job:
    """A request on its way through the engine. ``sink`` is opaque to the engine.

    ``posted`` is written by the engine thread only, ``consumed`` by the request's
    side only; their difference bounds the events in flight to ``CHANNEL_CAPACITY``,
    so a delivery into a channel of that size never blocks and never overflows.
    """

    id: int
    request: GenerationRequest
    sampler: SamplerLike
    sink: object = field(repr=False)
    posted: int = 0
    consumed: int = 0


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One generated token with its probabilities (when ``n_probs`` asked for them)."""

    token: int
    logprob: float | None = None
    top: tuple[TokenProb, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    """The request got a slot (it may have waited in the queue)."""

    id_slot: int
    tokens_cached: int


@dataclass(frozen=True, slots=True)
class Token:
    """Text released by one step; ``text`` may be empty while a stop string is pending."""

    text: str
    tokens: tuple[TokenInfo, ...]


@dataclass(frozen=True, slots=True)
class Done:
    stop_type: StopType
    stopping_word: str
    tokens_predicted: int
    tokens_evaluated: int
    tokens_cached: int
    truncated: bool
    id_slot: int
    prompt_ms: float
    predicted_ms: float
    prompt_n: int  # prompt tokens actually evaluated (not taken from the cache)
    grammar_rejections: int = 0
    grammar_full_passes: int = 0
    grammar_narrowed_passes: int = 0


@dataclass(frozen=True, slots=True)
class Failed:
    message: str


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the prompt is (``return_progress``): llama.cpp's ``prompt_progress``."""

    total: int  # prompt tokens
    cache: int  # of them taken from the cache
    processed: int  # of them in the KV now (the cached ones included)
    time_ms: float  # since the request got its slot


Event = Started | Token | Done | Failed | Progress
