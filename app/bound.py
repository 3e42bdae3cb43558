"""A request's model while the request runs: :class:`Bound`, what :meth:`Service.bind`
gives a route (the runtime leased, the model's own settings, the server's defaults), and
what a route may do with it (submit a completion, embed, rerank, act on a slot).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from app import chat
from app.completion import CompletionRequest
from app.engine import ports, scheduler
from app.engine.embedding import Embedder, EmbeddingError
from app.engine.rerank import RerankError
from app.engine.slots import SlotInfo as SlotInfo  # what /slots reports, for the routes
from app.errors import (
    InvalidRequest,
    NotSupported,
    SlotBusy,
    SlotFileError,
    Unavailable,
)
from app.hosted import Hosted
from app.requests import Defaults
from app.running import Completion
from app.runtime import ModelLike, RuntimeLike

if TYPE_CHECKING:
    from app.service import Service

T = TypeVar("T")

#: how long a slot action may wait for the engine thread
SLOT_ACTION_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


class Bound:
    """A request's model: its runtime, leased from :meth:`Service.bind` until :meth:`release`."""

    def __init__(self, service: Service, hosted: Hosted, runtime: RuntimeLike) -> None:
        self.service = service
        self.hosted = hosted
        self.runtime = runtime
        self.settings = hosted.spec.settings(service.settings)
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.service.registry.release(self.hosted, self.runtime)

    @property
    def name(self) -> str:
        return self.hosted.name

    model_name = name

    @property
    def model(self) -> ModelLike:
        return self.runtime.model

    @property
    def engine(self) -> scheduler.Engine:
        return self.runtime.engine

    @property
    def chat(self) -> chat.ChatTemplate:
        return self.runtime.chat

    @property
    def embedder(self) -> Embedder | None:
        return self.runtime.embedder

    @property
    def defaults(self) -> Defaults:
        return self.service.defaults

    def template_variables(self, body: Mapping[str, Any] | None = None, *,
                           thinking: bool | None = None) -> dict[str, Any]:
        """The chat template's extra variables: ``enable_thinking`` as llama.cpp sets it (true
        unless ``--reasoning off`` or ``--reasoning-budget 0``; templates that close the
        thinking block unless told otherwise read it), then ``--chat-template-kwargs``, then
        the request's ``chat_template_kwargs``; ``thinking`` is a family's own switch
        (Anthropic's ``thinking``, Ollama's ``think``), over the server's."""
        raw = self.settings.chat_template_kwargs
        off = self.settings.reasoning == "off" or self.settings.reasoning_budget == 0
        server = {"enable_thinking": not off if thinking is None else thinking,
                  **(json.loads(raw) if raw else {})}
        return chat.template_variables(server, (body or {}).get("chat_template_kwargs"))

    async def submit(self, request: CompletionRequest) -> Completion:
        """Prepare ``request`` and register it.

        Cancellation: a client that leaves while its request is prepared costs
        the rest of that preparation (it runs in a worker thread), nothing more.

        Raises:
            InvalidRequest: and its subclasses, naming the field.
            Unavailable: shutting down, the model was unloaded meanwhile, or the engine
                is not running.
        """
        return await self.service._submit(self, request)

    async def with_model(self, work: Callable[[RuntimeLike], T]) -> T:
        """Run ``work(runtime)`` in a worker thread (tokenizing, embedding...)."""
        return await trio.to_thread.run_sync(work, self.runtime)

    async def rerank(self, query: str, document: str, *, field: str) -> tuple[float, int]:
        """The relevance score of one pair and its tokens, in a worker thread.

        Raises:
            NotSupported: reranking is off.
            InvalidRequest: the pair is empty or does not fit, naming ``field``.
        """
        reranker = self.runtime.reranker
        if reranker is None:
            raise NotSupported("This server does not support reranking. Start it with "
                               "`--reranking`")

        def one() -> tuple[float, int]:
            tokens = reranker.tokens(query, document)
            return reranker.score(tokens), len(tokens)

        try:
            return await trio.to_thread.run_sync(one)
        except RerankError as exc:
            raise InvalidRequest(f"invalid value for '{field}': {exc}", param=field) from None

    async def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        """Embed each token list in a worker thread.

        Raises:
            NotSupported: embeddings are off.
            InvalidRequest: an input does not fit, naming ``input[i]``.
        """
        embedder = self.runtime.embedder
        if embedder is None:
            raise NotSupported("embeddings are disabled; start the server with --embedding")
        vectors = []
        for i, tokens in enumerate(token_lists):
            try:
                vectors.append(await trio.to_thread.run_sync(embedder.embed, tokens))
            except EmbeddingError as exc:
                raise InvalidRequest(f"invalid value for 'input[{i}]': {exc}",
                                     param=f"input[{i}]") from None
        return vectors

    def slot_infos(self) -> list[SlotInfo]:
        return self.engine.slot_infos()

    async def slot_action(self, kind: str, slot_id: int, path: str = "") -> dict[str, int]:
        """Save, restore or erase an idle slot's KV (``path`` for save and restore).

        Raises:
            SlotBusy: the slot is processing a request.
            SlotFileError: the file could not be written or read.
            Unavailable: the engine did not answer in time.
        """
        engine = self.runtime.engine
        if not engine.alive:
            raise Unavailable("the engine is not running")
        identity = await self.service.fingerprint(self.model.info.path) if kind != "erase" else ""
        future = engine.slot_action(kind, slot_id, path, identity)
        try:
            return await trio.to_thread.run_sync(future.result, SLOT_ACTION_TIMEOUT_S)
        except ports.SlotBusy as exc:
            raise SlotBusy(str(exc)) from None
        except ports.SlotFileError as exc:
            raise SlotFileError(str(exc), param="filename") from None
        except ports.EngineStopped as exc:
            raise Unavailable(str(exc)) from None
        except concurrent.futures.TimeoutError:
            raise Unavailable("the engine did not answer the slot action in time") from None
