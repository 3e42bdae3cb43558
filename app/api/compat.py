"""Routes of the smaller servers Sluice replaces: llama-go, the Rust ``llm`` server, llm-api.

- llama-go: ``POST /api/completion`` ``{prompt, tokens, top_k, top_p, temp, repeat_penalty,
  repeat_lastn}`` -> ``{"Prompt", "Text", "Tokens", "CompleteReason"}``; ``Tokens`` is the
  number of generated tokens, ``CompleteReason`` is ``EOS``, ``MaxTokens``, ``Stop`` or
  ``Aborted``.
- Rust ``llm``: ``POST /stream`` ``{prompt, num_predict (default 32), n_batch, top_k, top_p,
  repeat_penalty, temp, cache}`` -> the generated text as a plain-text streaming body. With
  ``cache``, the evaluated state (prompt and output) is saved under that id when the request
  ends, and a later request with the same id starts from it (only its new suffix is
  evaluated). ``n_batch`` sizes llama.cpp's prompt batches per request there; here batches are
  shared by all slots, so it cannot apply: it is accepted and named in the
  ``X-Sluice-Ignored`` response header.
- llm-api: ``POST /predict`` (``prompt``) and ``POST /chat`` (repeated ``messages``,
  alternating user / assistant, starting with user) as ``application/x-www-form-urlencoded``,
  with ``stopRegex``, ``temperature``, ``max_tokens``, ``template`` (a built-in name; default
  the server's chat template) and ``system``. Replies stream as plain text. ``stopRegex``
  (Python ``re`` syntax without look-around or back-references: it runs on RE2, in linear time,
  so no pattern can stall the server) ends generation at its first match, which is not sent; text streamed
  before the match was found stays sent. Errors before streaming are a status with a plain-text
  description.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace
from functools import wraps
from pathlib import Path
from typing import Any

import trio
from quart import Response, current_app, request

from app.api.common import Family, json_response, service, streamed, with_model
from app.api.drive import Wire, drive
from app.bound import Bound
from app.builtin_templates import ALIASES, BUILTINS
from app.chat import ChatTemplate, Message
from app.completion import CompletionRequest, Delta, Outcome, StopType
from app.errors import JSON, ApiError, InvalidRequest, ServerError, SlotBusy, SlotFileError
from app.requests import Defaults, build, renamed, sampling_from
from grammar.linear_regex import UnsupportedPattern, compile_linear

compat = Family("compat", __name__)


def _request(values: JSON, defaults: Defaults, *, n_predict: int | None = None,
             stops: tuple[str, ...] = ()) -> CompletionRequest:
    """A request from fields already under llama.cpp's names."""
    limit = values.get("n_predict", n_predict)
    return build(defaults, prompt=(values["prompt"],), sampling=sampling_from(values, defaults),
                 n_predict=int(limit) if limit is not None else None, stops=stops)


# --- llama-go ----------------------------------------------------------------------------------
_LLAMA_GO = {"prompt": "prompt", "tokens": "n_predict", "top_k": "top_k", "top_p": "top_p",
             "temp": "temperature", "repeat_penalty": "repeat_penalty",
             "repeat_lastn": "repeat_last_n", "seed": "seed"}


def complete_reason(outcome: Outcome) -> str:
    """llama-go's ``CompleteReason``."""
    if outcome.interruption is not None:
        return "Aborted"
    return {StopType.EOS: "EOS", StopType.LIMIT: "MaxTokens", StopType.WORD: "Stop",
            StopType.NONE: "Aborted"}[outcome.stop]


def llama_go_reply(prompt: str, outcome: Outcome) -> JSON:
    return {"Prompt": prompt, "Text": outcome.text, "Tokens": outcome.n_predicted,
            "CompleteReason": complete_reason(outcome)}


@compat.route("/api/completion", methods=["POST"])
@with_model("llama_go")
async def llama_go(m: Bound, body: JSON) -> Response:
    completion = await m.submit(_request(renamed(body, _LLAMA_GO), m.defaults))
    outcome = await completion.result()
    return json_response(llama_go_reply(body["prompt"], outcome))


# --- Rust llm: /stream -----------------------------------------------------------------------
_LLM_STREAM = {"prompt": "prompt", "num_predict": "n_predict", "top_k": "top_k", "top_p": "top_p",
               "repeat_penalty": "repeat_penalty", "temp": "temperature", "seed": "seed"}
_CACHE_DIR = "sluice.prompt_cache_dir"


@compat.record_once
def _setup(state: Any) -> None:
    state.app.extensions[_CACHE_DIR] = None


@compat.after_app_serving
async def _cleanup() -> None:
    scratch = current_app.extensions.get(_CACHE_DIR)
    if scratch is not None:
        scratch.cleanup()


def cache_dir(svc: Bound) -> Path:
    """Where /stream keeps its prompt caches: under --slot-save-path, else a temporary folder."""
    if svc.settings.slot_save_path is not None:
        path = svc.settings.slot_save_path / "prompt-cache"
        path.mkdir(exist_ok=True)
        return path
    scratch = current_app.extensions.get(_CACHE_DIR)
    if scratch is None:
        scratch = tempfile.TemporaryDirectory(prefix="sluice-cache-")
        current_app.extensions[_CACHE_DIR] = scratch
    return Path(scratch.name)


async def _restore_cache(svc: Bound, path: Path) -> int:
    """Load a saved state into an idle slot; its id, or -1 when none could take it."""
    for info in svc.slot_infos():
        if info.is_processing:
            continue
        try:
            await svc.slot_action("restore", info.id, str(path))
        except SlotBusy:
            continue
        except SlotFileError:
            return -1
        return info.id
    return -1


class TextStream(Wire):
    """A plain-text stream (the Rust ``llm`` server's ``/stream``, llm-api's routes): the
    text as it comes, nothing else. ``stop`` (llm-api's ``stopRegex``) ends it before the
    first match, and the generation with it. A failure has no in-band form in plain text:
    it raises, and the stream is cut (see :func:`app.api.common.streamed`)."""

    def __init__(self, stop: Any = None) -> None:
        self.stop = stop
        self.produced = ""
        self.sent = 0
        self.id_slot = -1

    def delta(self, index: int, item: Delta) -> list[bytes]:
        self.id_slot = item.id_slot
        if self.stop is None:
            return [item.text.encode()] if item.text else []
        self.produced += item.text
        match = self.stop.search(self.produced)
        end = match.start() if match is not None else len(self.produced)
        out = [self.produced[self.sent:end].encode()] if end > self.sent else []
        self.sent = max(self.sent, end)
        self.finished = match is not None
        return out

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        self.id_slot = outcome.id_slot
        return []

    def failure(self, index: int, message: str) -> list[bytes]:
        raise ServerError(message)


@compat.route("/stream", methods=["POST"])
@with_model("llm_stream")
async def llm_stream(m: Bound, body: JSON) -> Response:
    values = renamed(body, _LLM_STREAM)
    # one folder per model: a state is only ever restored into the model that computed it
    # (the restore checks its fingerprint too)
    folder = cache_dir(m) / hashlib.sha256(m.name.encode()).hexdigest()[:16]
    if "cache" in body:
        folder.mkdir(exist_ok=True)
    cache_file = folder / f"{body['cache']}.bin" if "cache" in body else None
    request_ = _request(values, m.defaults, n_predict=32)
    if cache_file is not None and cache_file.is_file():
        slot = await _restore_cache(m, cache_file)
        if slot >= 0:
            request_ = replace(request_, id_slot=slot)
    completion = await m.submit(request_)

    wire = TextStream()

    async def text() -> AsyncGenerator[bytes]:
        async with aclosing(drive(m, [completion], wire, None)) as chunks:
            async for chunk in chunks:
                yield chunk
        id_slot = wire.id_slot
        if cache_file is not None and id_slot >= 0:
            # a short, bounded clean-up step; if it fails, the next request with this id
            # evaluates its prompt in full
            with trio.CancelScope(shield=True), contextlib.suppress(ApiError):
                await m.slot_action("save", id_slot, str(cache_file))

    headers = {"X-Sluice-Ignored": "n_batch"} if "n_batch" in body else {}
    return streamed(text(), completion.id, text=True, headers=headers)


# --- llm-api: form routes -------------------------------------------------------------------
def plain_errors(handler: Callable[[], Awaitable[Response]]) -> Callable[[], Awaitable[Response]]:
    """llm-api reports errors as a status with a plain-text description."""

    @wraps(handler)
    async def wrapper() -> Response:
        try:
            return await handler()
        except ApiError as exc:
            return Response(exc.message + "\n", status=exc.status,
                            content_type="text/plain; charset=utf-8", headers=exc.headers)

    return wrapper


_FORM_FIELDS = {"prompt", "messages", "stopRegex", "temperature", "max_tokens", "template",
                "system"}


async def _form() -> Any:
    content_type = request.headers.get("Content-Type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise InvalidRequest("send the body as application/x-www-form-urlencoded")
    form = await request.form
    for key in form:
        if key not in _FORM_FIELDS:
            raise InvalidRequest(f"unknown field '{key}'", param=key)
    return form


def _number(form: Any, key: str, kind: type[float] | type[int], lo: float, hi: float) -> Any:
    if key not in form:
        return None
    try:
        value = kind(form[key])
    except ValueError:
        raise InvalidRequest(f"invalid value for '{key}': {form[key]!r} is not a "
                             f"{kind.__name__}", param=key) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"invalid value for '{key}': {value} is outside {lo}..{hi}",
                             param=key)
    return value


def _stop_regex(form: Any) -> Any:
    """llm-api's ``stopRegex``, run by RE2 (linear time: it is searched after every token)."""
    raw = form.get("stopRegex")
    if not raw:
        return None
    try:
        return compile_linear(raw)
    except UnsupportedPattern as exc:
        raise InvalidRequest(f"invalid value for 'stopRegex': {exc.reason}",
                             param="stopRegex") from None


def _template(svc: Bound, form: Any) -> ChatTemplate:
    name = form.get("template")
    if name is None:
        return svc.chat
    key = ALIASES.get(name, name)
    if key not in BUILTINS:
        raise InvalidRequest(f"invalid value for 'template': use one of "
                             f"{', '.join(sorted(BUILTINS))}", param="template")
    b = BUILTINS[key]
    return ChatTemplate(key, b.source, stops=b.stops, bos_token=svc.chat.bos_token,
                        eos_token=svc.chat.eos_token)


async def _text_reply(svc: Bound, form: Any, prompt: str, stops: tuple[str, ...]) -> Response:
    values: JSON = {"prompt": prompt}
    temperature = _number(form, "temperature", float, 0, 100)
    if temperature is not None:
        values["temperature"] = temperature
    max_tokens = _number(form, "max_tokens", int, -1, 1 << 20)
    if max_tokens is not None:
        values["n_predict"] = max_tokens
    pattern = _stop_regex(form)
    completion = await svc.submit(_request(values, svc.defaults, stops=stops))

    return streamed(drive(svc, [completion], TextStream(pattern), None), completion.id,
                    text=True)


@compat.route("/predict", methods=["POST"])
@plain_errors
async def llm_api_predict() -> Response:
    form = await _form()
    if "prompt" not in form:
        raise InvalidRequest("'prompt' is required", param="prompt")
    async with service().use(form.get("model") or None) as svc:
        return await _text_reply(svc, form, form["prompt"], ())


@compat.route("/chat", methods=["POST"])
@plain_errors
async def llm_api_chat() -> Response:
    form = await _form()
    async with service().use(form.get("model") or None) as svc:
        return await _llm_api_chat(svc, form)


async def _llm_api_chat(svc: Bound, form: Any) -> Response:
    texts = form.getlist("messages")
    if not texts:
        raise InvalidRequest("'messages' is required (repeat it: user, assistant, user, ...)",
                             param="messages")
    if len(texts) % 2 == 0:
        raise InvalidRequest("'messages' must alternate user/assistant and end with a user "
                             "message", param="messages")
    messages = [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]
    template = _template(svc, form)
    system = form.get("system") or svc.settings.system_prompt
    return await _text_reply(svc, form, template.prompt(messages, system), template.stops)
