"""The typed completion core: what a request is, what its stream carries, how it ended.

Every API family builds a :class:`CompletionRequest` from its own body in one
function, submits it (:meth:`app.service.Service.submit`), and renders the items
of the resulting stream (:data:`Item`) into its own wire format. Nothing here
knows a wire shape, and nothing here imports llama_cpp, trio or quart, so a
request can be built and checked without the engine.

``SamplingParams`` is the one definition of the sampling fields: parsing
(``app.requests``), the reported ``generation_settings`` and the ``/props``
defaults all derive from :func:`dataclasses.fields` of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from grammar import Violation
from grammar.tools import HERMES, CallSyntax

#: sampler names accepted in a request's ``samplers`` list (llama.cpp's names).
KNOWN_SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
                  "temperature")
DEFAULT_SAMPLERS = KNOWN_SAMPLERS  # llama.cpp's default order
#: llama.cpp's default DRY sequence breakers
DRY_BREAKERS = ("\n", ":", "\"", "*")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters of one request; field names are llama.cpp's wire names.

    ``seed`` -1 and text keys of ``logit_bias`` are resolved by the service before
    the request reaches the engine.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0  # DRY ("don't repeat yourself"): 0 = off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # -1: the slot's context
    dry_sequence_breakers: tuple[str, ...] = DRY_BREAKERS
    #: a dry_* field was set, by the request or a server flag: the schema loop guard
    #: (``--schema-dry``) leaves DRY as it is
    dry_given: bool = False
    xtc_probability: float = 0.0  # XTC ("exclude top choices"): 0 = off
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0  # -1 = off
    dynatemp_range: float = 0.0  # dynamic temperature: temperature +- range; 0 = off
    dynatemp_exponent: float = 1.0
    seed: int = -1
    ignore_eos: bool = False
    n_probs: int = 0
    # the n_probs reported are those after the sampler chain (llama.cpp's post_sampling_probs)
    post_sampling_probs: bool = False
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    logit_bias: tuple[tuple[int, float], ...] = ()  # resolved token ids only

    @property
    def penalties_active(self) -> bool:
        return (self.repeat_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0) and self.repeat_last_n != 0

    @property
    def dry_active(self) -> bool:
        return self.dry_multiplier > 0.0 and self.dry_base >= 1.0 and self.dry_penalty_last_n != 0

    @property
    def xtc_active(self) -> bool:
        return self.xtc_probability > 0.0 and self.xtc_threshold <= 0.5

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes which token is the maximum (argmax will do)."""
        return self.greedy and not (self.penalties_active or self.dry_active or self.xtc_active)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 and self.mirostat == 0


# --- the request ---------------------------------------------------------------------------------
#: How JSON Schemas become grammars (``grammar.convert``): ``generation`` (the default) leads the
#: model to the described object (closed objects, declared order, bounded strings); ``spec``
#: is the spec-faithful shape (open objects, any order). ``None``: the server's --schema-mode.
SchemaMode = Literal["generation", "spec"]
SCHEMA_MODES: tuple[SchemaMode, ...] = ("generation", "spec")

@dataclass(frozen=True, slots=True)
class GrammarConstraint:
    """A GBNF grammar written by the client."""

    text: str
    field: str = "grammar"


#: the ``field`` of the server's own default constraint (a tool call replaces it)
SERVER_FIELDS = ("--grammar", "--json-schema")

@dataclass(frozen=True, slots=True)
class SchemaConstraint:
    """A JSON Schema: converted to GBNF, and the output validated against it."""

    schema: Any
    field: str = "json_schema"  # the request field errors name (``response_format``, ...)
    strict: bool = False  # objects without additionalProperties are closed (OpenAI's strict)


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the model may call; ``parameters`` is the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: Any
    field: str  # the request field errors about its schema name: ``tools[0].function.parameters``
    strict: bool = False  # objects without additionalProperties are closed


@dataclass(frozen=True, slots=True)
class ToolsConstraint:
    """The reply may (``required=False``) or must call one of ``tools``; arguments follow their
    schemas. Converted to GBNF by :mod:`grammar.tools` (text format in :mod:`app.tools`)."""

    tools: tuple[FunctionTool, ...]
    required: bool
    parallel: bool
    syntax: CallSyntax = HERMES  # how the model writes calls (its template's format)


Constraint = GrammarConstraint | SchemaConstraint | ToolsConstraint


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One completion as every API family asks for it."""

    prompt: tuple[str | int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # (token id or text, bias); text is tokenized by the service, every token of it biased
    logit_bias: tuple[tuple[int | str, float], ...] = ()
    n_predict: int = -1  # -1: until end of generation or the slot's context; 0: prompt only
    stops: tuple[str, ...] = ()
    constraint: Constraint | None = None
    cache_prompt: bool = True
    id_slot: int = -1
    n_keep: int = 0  # prompt tokens a context shift keeps (-1: all), BOS not counted
    n_discard: int = 0  # tokens a context shift drops after them (0: half of the rest)
    n_cache_reuse: int = 0  # reuse cached chunks at least this long by shifting them (0: off)
    # LoRA scales by adapter id (the others 0); None: the server's (llama.cpp's ``lora``)
    lora: tuple[tuple[int, float], ...] | None = None
    n_indent: int = 0  # code completion: end at a later line indented less than this
    t_max_predict_ms: int = 0  # once a newline was generated, end after this long (<= 0: off)
    return_progress: bool = False  # streams report prompt progress (llama.cpp's prompt_progress)
    return_tokens: bool = False  # llama.cpp's final reply lists the generated token ids
    timings_per_token: bool = False  # every stream event carries the timings so far
    schema_mode: SchemaMode | None = None  # how schemas become grammars; None: the server's
    #: a reasoning chat turn: the schema or tool grammar lets a thinking block come first
    #: ("open": the prompt opened it; "optional": the model may open one); "" none
    thinking: Literal["", "open", "optional"] = ""

    @property
    def prompt_text(self) -> str:
        """The prompt when it is one string (what llama.cpp echoes back), else ''."""
        only = self.prompt[0] if len(self.prompt) == 1 else None
        return only if isinstance(only, str) else ""


# --- what the stream carries ---------------------------------------------------------------------
class StopType(enum.Enum):
    """Why generation ended by itself (llama.cpp's ``stop_type``)."""

    NONE = "none"  # it did not: see :class:`Interruption`
    EOS = "eos"
    LIMIT = "limit"
    WORD = "word"


class Interruption(enum.Enum):
    """Why a request was ended from outside before it finished."""

    ABORTED = "aborted"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    MODEL_CHANGED = "model_changed"


@dataclass(frozen=True, slots=True)
class TokenProb:
    id: int
    piece: bytes
    logprob: float

    @property
    def text(self) -> str:
        return self.piece.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """A generated token's log-probability and the most likely alternatives."""

    chosen: TokenProb
    top: tuple[TokenProb, ...]


@dataclass(frozen=True, slots=True)
class PromptProgress:
    """How far the prompt is (only for requests with ``return_progress``)."""

    total: int
    cache: int
    processed: int
    time_ms: float


class Ping:
    """Nothing happened for a ping interval: streams send a keep-alive."""

    __slots__ = ()


PING = Ping()


@dataclass(frozen=True, slots=True)
class Delta:
    """Text released by one engine step; ``text`` may be empty while a stop string is pending."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...]  # empty unless the request asked for n_probs
    id_slot: int
    n_predicted: int  # tokens generated so far, this step's included
    timings: Timings | None = None  # the timings so far, when the request asked per token


@dataclass(frozen=True, slots=True)
class Timings:
    prompt_n: int  # prompt tokens evaluated (not taken from the cache)
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int = 0  # prompt tokens taken from the cache


@dataclass(frozen=True, slots=True)
class SchemaVerdict:
    """The output validated against the request's JSON Schema."""

    valid: bool
    errors: tuple[Violation, ...]


@dataclass(frozen=True, slots=True)
class Reported:
    """What a request ran with, as resolved by the service (for ``generation_settings``)."""

    request: CompletionRequest  # seed resolved, logit_bias tokenized into sampling
    grammar: str | None  # the GBNF that constrained it
    n_prompt: int  # prompt tokens, after tokenization
    model: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a completion ended, with everything it produced."""

    id: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...]
    stop: StopType
    stopping_word: str
    interruption: Interruption | None
    truncated: bool
    id_slot: int
    tokens_cached: int
    timings: Timings
    reported: Reported
    schema: SchemaVerdict | None = None
    # (rejections, whole-vocabulary passes, passes narrowed by app/engine/grammar_filter.py)
    grammar_stats: tuple[int, int, int] | None = None

    @property
    def n_prompt(self) -> int:
        return self.reported.n_prompt

    @property
    def n_predicted(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class Final:
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Failure:
    """The engine failed the request after it started (a plain error before that)."""

    message: str


Item = Ping | Delta | Final | Failure | PromptProgress
