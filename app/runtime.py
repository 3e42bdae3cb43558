"""One loaded model with everything that runs it: context, engine thread, embedder, template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from app.bridge import TrioOutbox
from app.chat import ChatTemplate, select
from app.completion import SamplingParams
from app.engine.context import Context, ContextConfig
from app.engine.embedding import Embedder
from app.engine.events import SamplerLike
from app.engine.model import Model, ModelInfo
from app.engine.sampling import Sampler
from app.engine.scheduler import Engine
from app.settings import Settings


class ModelLike(Protocol):
    """What the service needs of a loaded model (:class:`app.engine.model.Model`)."""

    n_vocab: int
    eog_ids: frozenset[int]

    @property
    def info(self) -> ModelInfo: ...

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]: ...

    def valid_token(self, token: int) -> bool: ...

    def piece(self, token: int) -> bytes: ...

    def token_text(self, token: int) -> str: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def fim_tokens(self) -> tuple[int, int, int] | None: ...


class RuntimeLike(Protocol):
    """One loaded model and what runs it; tests put fakes behind this."""

    @property
    def model(self) -> ModelLike: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def chat(self) -> ChatTemplate: ...

    @property
    def embedder(self) -> Embedder | None: ...

    def new_sampler(self, params: SamplingParams, grammar: str | None) -> SamplerLike:
        """Build a request's sampler. Blocking (grammar construction): call in a worker."""
        ...

    def close(self) -> None: ...


def chat_template_for(settings: Settings, model: Model) -> ChatTemplate:
    """The chat template the settings and the model call for.

    Raises:
        ValueError: an unknown built-in or a template that does not compile.
    """
    info = model.info
    return select(
        file=settings.chat_template_file, name=settings.chat_template,
        gguf_template=info.chat_template, architecture=info.architecture,
        bos_token=model.token_text(info.bos) if info.bos >= 0 else "",
        eos_token=model.token_text(info.eos) if info.eos >= 0 else "")


@dataclass(eq=False)
class Runtime:
    model: Model
    context: Context
    engine: Engine
    chat: ChatTemplate
    embedder: Embedder | None = None

    @classmethod
    def start(cls, settings: Settings, model: Model,
              template: ChatTemplate | None = None) -> Runtime:
        """Create the context and start the engine thread. Call from the Trio thread."""
        context = Context(model, ContextConfig(
            n_ctx=settings.ctx_size, n_batch=settings.batch_size, n_seq_max=settings.parallel,
            threads=settings.threads, threads_batch=settings.threads_batch,
            flash_attn=settings.flash_attn))
        outbox = TrioOutbox(trio.lowlevel.current_trio_token())
        engine = Engine(model, context, outbox, n_slots=settings.parallel,
                        slot_ctx=min(settings.slot_ctx, context.n_ctx_seq))
        outbox.on_gone = engine.cancel
        engine.start()
        embedder = None
        if settings.embedding:
            embedder = Embedder(model, n_ctx=min(settings.slot_ctx, 8192), threads=settings.threads)
        return cls(model, context, engine, template or chat_template_for(settings, model), embedder)

    def new_sampler(self, params: SamplingParams, grammar: str | None) -> SamplerLike:
        return Sampler(self.model, params, grammar)

    def close(self) -> None:
        """Stop the engine thread and free the context, the embedder and the model. Blocking."""
        self.engine.stop()
        self.context.close()
        if self.embedder is not None:
            self.embedder.close()
        self.model.close()
