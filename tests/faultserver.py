"""``python -m tests.faultserver …``: the real server, with a fault injectable per request.

A request that sends ``X-Fault: <stage>`` has that stage raise ``RuntimeError("injected
fault")`` on its behalf, and only on its behalf: the others, concurrent or later, run the
unpatched code. The stages are the places a request's life passes through, whatever its
family:

* ``parse``: decoding and checking the JSON body;
* ``prepare``: tokenizing, building the grammar and the sampler settings;
* ``render``: the chat template;
* ``engine``: the scheduler's step for that request's slot, on the engine thread;
* ``delta``: turning an engine event into the request's text;
* ``validation``: checking the finished text against its schema;
* ``outcome``: building the final result (timings, report);
* ``wire``: writing a stream event or a JSON reply.

The stage travels in a context variable (copied into the request's tasks and workers);
the engine thread has no request context, so ``engine`` marks the job at submission.
Nothing here is imported by the server itself.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable
from typing import Any

from quart import request

from app.launch import main

FAULT: contextvars.ContextVar[str] = contextvars.ContextVar("fault", default="")
_FAULTED_JOBS: set[int] = set()


class InjectedFault(RuntimeError):
    pass


def _raising(stage: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if FAULT.get() == stage:
            raise InjectedFault(f"injected fault at {stage}")
        return original(*args, **kwargs)
    return wrapper


def _everywhere(module: Any, name: str, stage: str) -> None:
    """Replace ``module.name`` and every ``from module import name`` binding of it."""
    original = getattr(module, name)
    wrapped = _raising(stage, original)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("app") and \
                getattr(mod, name, None) is original:
            setattr(mod, name, wrapped)


def install() -> None:
    # every family's module first, so that their own bindings of a name are patched too
    import app.api.anthropic
    import app.api.compat
    import app.api.extras
    import app.api.goinfer
    import app.api.native
    import app.api.ollama
    import app.api.openai
    import app.api.responses
    import app.chat
    import app.engine.scheduler
    import app.prepare
    import app.running
    import app.server
    import app.sse
    import app.validation

    _everywhere(app.validation, "parse_json_body", "parse")
    _everywhere(app.prepare, "prepare", "prepare")
    _everywhere(app.running, "validate", "validation")
    _everywhere(app.running, "Outcome", "outcome")
    _everywhere(app.sse, "event", "wire")
    _everywhere(app.sse, "named", "wire")
    _everywhere(app.api.common, "json_response", "wire")
    _everywhere(app.api.ollama, "_line", "wire")
    chat = app.chat.ChatTemplate
    chat.render = _raising("render", chat.render)  # type: ignore[method-assign]
    builder = app.running._Builder
    builder.delta = _raising("delta", builder.delta)  # type: ignore[method-assign]

    scheduler = app.engine.scheduler.Engine
    submit, advance = scheduler.submit, scheduler._advance

    def marked_submit(self: Any, job: Any) -> None:
        if FAULT.get() == "engine":
            _FAULTED_JOBS.add(job.id)
        submit(self, job)

    def faulty_advance(self: Any, slot: Any, rows: int, logit_row: int | None) -> None:
        if slot.job is not None and slot.job.id in _FAULTED_JOBS:
            raise InjectedFault("injected fault at engine")
        advance(self, slot, rows, logit_row)

    scheduler.submit = marked_submit  # type: ignore[method-assign]
    scheduler._advance = faulty_advance  # type: ignore[method-assign]

    create_app = app.server.create_app

    def with_fault_header(*args: Any, **kwargs: Any) -> Any:
        quart_app = create_app(*args, **kwargs)

        @quart_app.before_request
        async def set_fault() -> None:
            FAULT.set(request.headers.get("X-Fault", ""))

        # run first: the server's own hooks (the key, the body limit) come after
        quart_app.before_request_funcs[None].insert(0, quart_app.before_request_funcs[None].pop())
        return quart_app

    app.server.create_app = with_fault_header


if __name__ == "__main__":
    install()
    sys.exit(main())
