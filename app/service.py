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
from dataclasses import dataclass, replace
from pathlib import Path
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
from app.runtime import Runtime
from app.settings import Settings
from grammar import (
    Conversion,
    GbnfSyntaxError,
    SchemaError,
    UnsupportedSchemaError,
    convert,
    parse_gbnf,
)
from grammar.gbnf import Grammar
from grammar.gbnf_ast import token_refs


@dataclass(frozen=True, slots=True)
class Prepared:
    params: CompletionParams
    request: GenerationRequest
    sampling: SamplingParams
    grammar: str | None
    schema: Any = None  # the JSON Schema the grammar came from, validated after generation
    conversion: Conversion | None = None
    model: Model | None = None  # the model it was tokenized for


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
    """Owns the loaded model's runtime and the running requests.

    The model can be switched or unloaded while the server runs (goinfer's
    routes): running requests then end like an abort, marked
    ``"model_changed": true``; requests arriving during a load wait for the new
    model; with no model loaded they get 503.
    """

    def __init__(self, settings: Settings, runtime: Runtime | None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.loading = False
        self._ready = trio.Event()
        if runtime is not None:
            self._ready.set()
        self._switch = trio.Lock()
        self.scratch_dir: tempfile.TemporaryDirectory[str] | None = None  # /stream caches
        self.token_feed: object | None = None  # goinfer's /ws broadcast (app.api.goinfer)
        self.infer_jobs: set[int] = set()  # running goinfer /infer requests, for /infer/abort
        self._ids = itertools.count(1)
        self.running: dict[int, Generation] = {}
        self._idle = trio.Event()
        self._idle.set()
        self.shutting_down = False

    # --- the loaded model --------------------------------------------------------
    def _rt(self) -> Runtime:
        if self.runtime is None:
            raise Unavailable("loading model" if self.loading else "no model is loaded")
        return self.runtime

    @property
    def model(self) -> Model:
        return self._rt().model

    @property
    def engine(self) -> Engine:
        return self._rt().engine

    @property
    def chat(self) -> chat.ChatTemplate:
        return self._rt().chat

    @property
    def embedder(self) -> Embedder | None:
        return self._rt().embedder

    async def switch_model(self, path: Path | None, **overrides: Any) -> None:
        """Unload the current model (ending its requests) and load ``path`` (None: unload only).

        ``overrides`` replace settings for the new model (``ctx_size``, ``embedding``,
        ``n_gpu_layers``). On a load failure no model is loaded.

        Raises:
            ModelLoadError: the new model could not be loaded.
        """
        async with self._switch:
            self.loading = path is not None
            self._ready = trio.Event()
            old, self.runtime = self.runtime, None
            for gen in list(self.running.values()):
                gen.request_stop(StopReason.MODEL_CHANGED)
            with trio.move_on_after(10):
                await self._idle.wait()
            if old is not None:
                await trio.to_thread.run_sync(old.close)
            if path is None:
                self._ready.set()  # nothing to wait for: requests get 503 at once
                return
            try:
                settings = replace(self.settings, model_path=path, **overrides)
                model = await trio.to_thread.run_sync(
                    lambda: Model(path, n_gpu_layers=settings.n_gpu_layers,
                                  verbose=settings.verbose))
                self.runtime = Runtime.start(settings, model)
                self.settings = settings
            finally:
                self.loading = False
                self._ready.set()

    # --- preparing ---------------------------------------------------------
    async def prepare(self, params: CompletionParams) -> Prepared:
        """Tokenize and check a request; waits while a model is loading.

        Raises:
            InvalidRequest: and its subclasses, naming the field.
            Unavailable: shutting down, or no model loaded.
        """
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        await self._ready.wait()
        self._rt()
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
        seed = params.sampling.seed
        sampling = replace(params.sampling, seed=seed if seed >= 0 else secrets.randbits(32),
                           logit_bias=self._logit_bias(params.logit_bias))
        request = GenerationRequest(prompt=tuple(tokens), n_predict=params.n_predict,
                                    stops=params.stops, cache_prompt=params.cache_prompt,
                                    id_slot=params.id_slot)
        return Prepared(params=params, request=request, sampling=sampling, grammar=grammar,
                        schema=params.json_schema if conversion else None, conversion=conversion,
                        model=self.model)

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
        for ref in token_refs(grammar):
            if isinstance(ref.value, int) and not self.model.valid_token(ref.value):
                raise InvalidRequest(f"invalid grammar: token id {ref.value} is outside the "
                                     "vocabulary", param="grammar")
            if isinstance(ref.value, str) and len(self.model.tokenize(
                    ref.value, add_special=False, parse_special=True)) != 1:
                raise InvalidRequest(f"invalid grammar: {ref.value} is not a single token",
                                     param="grammar")

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
        if self.runtime is None or prepared.model is not self.runtime.model:
            raise Unavailable("the model changed while the request was being prepared")
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
        engine = self.engine
        self.running[job_id] = gen
        self._idle = trio.Event()
        engine.submit(gen.job)
        try:
            with receive, send:
                yield gen
        finally:
            self.running.pop(job_id, None)
            engine.cancel(job_id)
            if not self.running:
                self._idle.set()

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
