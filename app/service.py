"""Between the HTTP layer and the engine: prompts, grammars, defaults, running requests.

:meth:`Service.prepare` turns typed request parameters into a tokenized,
checked :class:`Prepared` request (every error here is a 400 before any token
is generated); :meth:`Service.generate` submits it and yields a
:class:`~app.bridge.Generation` whose exit always removes the request from the
engine, whether it ended, failed, was aborted or its client went away.
"""

from __future__ import annotations

import itertools
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from app import chat
from app.bridge import CHANNEL_CAPACITY, Generation, StopReason
from app.engine.embedding import Embedder
from app.engine.events import Event, GenerationRequest, Job
from app.engine.model import Model
from app.engine.sampling import Sampler, SamplerInitError, SamplingParams
from app.engine.scheduler import Engine
from app.errors import ContextOverflow, InvalidRequest, Unavailable
from app.requests import CompletionParams
from app.settings import Settings
from grammar import (
    Conversion,
    GbnfSyntaxError,
    SchemaError,
    UnsupportedSchemaError,
    convert,
    parse_gbnf,
)
from grammar.gbnf import Grammar, TokenRef


@dataclass(frozen=True, slots=True)
class Prepared:
    params: CompletionParams
    request: GenerationRequest
    sampling: SamplingParams
    grammar: str | None
    schema: Any = None  # the JSON Schema the grammar came from, validated after generation
    conversion: Conversion | None = None


def chat_template_for(settings: Settings, model: Model) -> chat.ChatTemplate:
    """The chat template the settings and the model call for.

    Raises:
        ValueError: an unknown built-in or a template that does not compile.
    """
    info = model.info
    return chat.select(
        file=settings.chat_template_file, name=settings.chat_template,
        gguf_template=info.chat_template, architecture=info.architecture,
        bos_token=model.token_text(info.bos) if info.bos >= 0 else "",
        eos_token=model.token_text(info.eos) if info.eos >= 0 else "")


def convert_schema(schema: Any, *, field: str, prop_order: list[str] | None = None,
                   strict: bool = False, dotall: bool = False) -> Conversion:
    """Convert a request's JSON Schema, mapping grammar errors to a 400 naming ``field``."""
    try:
        return convert(schema, prop_order=prop_order, strict=strict, dotall=dotall)
    except SchemaError as exc:
        kind = "unsupported" if isinstance(exc, UnsupportedSchemaError) else "invalid"
        where = exc.pointer or "/"
        raise InvalidRequest(f"{kind} schema in '{field}' at {where}: {exc.message}",
                             param=field, pointer=where) from None


class Service:
    """Owns the running requests of one loaded model."""

    def __init__(self, settings: Settings, model: Model, engine: Engine,
                 chat_template: chat.ChatTemplate | None = None) -> None:
        self.settings = settings
        self.model = model
        self.engine = engine
        self.chat = chat_template or chat_template_for(settings, model)
        self.embedder: Embedder | None = None
        self.scratch_dir: tempfile.TemporaryDirectory[str] | None = None  # /stream caches
        self._ids = itertools.count(1)
        self.running: dict[int, Generation] = {}
        self.shutting_down = False

    # --- preparing ---------------------------------------------------------
    async def prepare(self, params: CompletionParams) -> Prepared:
        """Tokenize and check a request. Raises :class:`InvalidRequest` and friends."""
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        return await trio.to_thread.run_sync(self._prepare_sync, params)

    def _prepare_sync(self, params: CompletionParams) -> Prepared:
        tokens = self.tokenize_prompt(params.prompt)
        n_ctx = self.engine.slot_ctx
        if len(tokens) >= n_ctx:
            raise ContextOverflow(len(tokens), n_ctx)
        if params.id_slot >= len(self.engine.slots):
            raise InvalidRequest(f"invalid value for 'id_slot': there are {len(self.engine.slots)} "
                                 "slots", param="id_slot")
        conversion = None
        grammar: str | None
        if params.json_schema is not None:
            conversion = convert_schema(params.json_schema, field="json_schema")
            grammar = conversion.gbnf
            parse_gbnf(grammar)  # the converter's output passes the same checks as a user's
        else:
            grammar = self._grammar(params)
        opts = params.sampling
        seed = opts.seed if opts.seed >= 0 else secrets.randbits(32)
        sampling = SamplingParams(
            temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p,
            typical_p=opts.typical_p, repeat_penalty=opts.repeat_penalty,
            repeat_last_n=opts.repeat_last_n, presence_penalty=opts.presence_penalty,
            frequency_penalty=opts.frequency_penalty, mirostat=opts.mirostat,
            mirostat_tau=opts.mirostat_tau, mirostat_eta=opts.mirostat_eta, seed=seed,
            logit_bias=self._logit_bias(opts.logit_bias), ignore_eos=opts.ignore_eos,
            n_probs=opts.n_probs, samplers=opts.samplers)
        request = GenerationRequest(prompt=tuple(tokens), n_predict=params.n_predict,
                                    stops=params.stops, cache_prompt=params.cache_prompt,
                                    id_slot=params.id_slot)
        return Prepared(params=params, request=request, sampling=sampling, grammar=grammar,
                        schema=params.json_schema if conversion else None, conversion=conversion)

    def tokenize_prompt(self, parts: tuple[str | int, ...]) -> list[int]:
        tokens: list[int] = []
        for i, part in enumerate(parts):
            if isinstance(part, str):
                tokens.extend(self.model.tokenize(part, add_special=False, parse_special=True))
            elif not self.model.valid_token(part):
                field = "prompt" if len(parts) == 1 else f"prompt[{i}]"
                raise InvalidRequest(f"invalid value for '{field}': token id {part} is outside "
                                     f"the vocabulary of {self.model.n_vocab}", param=field)
            else:
                tokens.append(part)
        bos = self.model.info.bos
        if self.model.info.add_bos and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens

    def _grammar(self, params: CompletionParams) -> str | None:
        if params.grammar is None:
            return None
        try:
            parsed = parse_gbnf(params.grammar)
        except GbnfSyntaxError as exc:
            raise InvalidRequest(f"invalid grammar: {exc}", param="grammar") from None
        self._check_grammar_tokens(parsed)
        return params.grammar

    def _check_grammar_tokens(self, grammar: Grammar) -> None:
        from grammar.gbnf import Alternatives, Repeat, Sequence

        def walk(node: object) -> None:
            match node:
                case TokenRef(value=int() as tid) if not self.model.valid_token(tid):
                    raise InvalidRequest(f"invalid grammar: token id {tid} is outside the "
                                         "vocabulary", param="grammar")
                case TokenRef(value=str() as text):
                    if len(self.model.tokenize(text, add_special=False, parse_special=True)) != 1:
                        raise InvalidRequest(f"invalid grammar: {text} is not a single token",
                                             param="grammar")
                case Repeat(node=inner):
                    walk(inner)
                case Sequence(items=items):
                    for item in items:
                        walk(item)
                case Alternatives(options=options):
                    for option in options:
                        walk(option)

        if grammar.uses_tokens:
            for alts in grammar.rules.values():
                walk(alts)

    def _logit_bias(self, pairs: tuple[tuple[int | str, float], ...]) -> tuple[tuple[int, float], ...]:
        out: list[tuple[int, float]] = []
        for key, bias in pairs:
            if isinstance(key, int):
                if not self.model.valid_token(key):
                    raise InvalidRequest(f"invalid value for 'logit_bias': token id {key} is "
                                         "outside the vocabulary", param="logit_bias")
                out.append((key, bias))
            else:
                out.extend((t, bias) for t in self.model.tokenize(key, add_special=False,
                                                                   parse_special=False))
        return tuple(out)

    # --- running -------------------------------------------------------------
    @asynccontextmanager
    async def generate(self, prepared: Prepared, job_id: int | None = None
                       ) -> AsyncIterator[Generation]:
        """Submit ``prepared`` and yield its :class:`Generation`.

        On exit (normal, error or cancellation) the request is removed from the
        engine: from the queue if it never started, from its slot otherwise.
        """
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        try:
            sampler = Sampler(self.model, prepared.sampling, prepared.grammar)
        except SamplerInitError as exc:
            raise InvalidRequest(f"invalid grammar: {exc}", param="grammar") from None
        if job_id is None:
            job_id = self.new_id()
        send, receive = trio.open_memory_channel[Event](CHANNEL_CAPACITY)
        timeout = self.settings.request_timeout_s
        gen = Generation(id=job_id, events=receive,
                         deadline=trio.current_time() + timeout if timeout else float("inf"))
        gen.job = Job(id=job_id, request=prepared.request, sampler=sampler, sink=send)
        self.running[job_id] = gen
        self.engine.submit(gen.job)
        try:
            with receive, send:
                yield gen
        finally:
            self.running.pop(job_id, None)
            self.engine.cancel(job_id)

    def new_id(self) -> int:
        return next(self._ids)

    @property
    def model_name(self) -> str:
        return self.settings.alias or self.model.info.path.name

    def abort(self, job_id: int) -> bool:
        gen = self.running.get(job_id)
        if gen is None:
            return False
        gen.request_stop(StopReason.ABORTED)
        return True

    def begin_shutdown(self) -> None:
        """Refuse new requests; running ones continue until :meth:`stop_all`."""
        self.shutting_down = True

    def stop_all(self) -> None:
        for gen in list(self.running.values()):
            gen.request_stop(StopReason.SHUTDOWN)
