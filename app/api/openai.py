"""OpenAI's routes: /v1/chat/completions, /v1/completions, /v1/models.

An OpenAI body is validated against its own schema, then translated into the
native body and parsed by the one request parser (``app.requests``), so a
sampling parameter means the same whichever route it arrives by. Replies are
built from the native final object.

Decisions where OpenAI's API has no counterpart here: ``n`` must be 1 and
``/v1/completions`` takes one prompt (400 otherwise); an aborted, timed-out or
shut-down request ends with ``finish_reason: "stop"`` and a top-level
``"aborted"`` / ``"timeout"`` / ``"shutdown": true``; ``model`` is accepted and
ignored (one model is loaded).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response

from app import sse
from app.api.common import json_response, read_json, run_stream, run_whole, service
from app.chat import Message
from app.errors import JSON, InvalidRequest
from app.requests import completion_params
from app.service import Prepared, Service
from app.validation import validate

openai = Blueprint("openai", __name__)

# OpenAI names that the native parser reads under the same name.
_SAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p",
         "typical_p", "repeat_penalty", "repeat_last_n", "mirostat", "mirostat_tau",
         "mirostat_eta", "ignore_eos", "grammar", "json_schema", "cache_prompt", "id_slot",
         "samplers", "n_keep")


def _native_body(body: JSON, prompt: Any, extra_stops: tuple[str, ...] = ()) -> JSON:
    """The native /completion body equivalent to an OpenAI body."""
    native: JSON = {"prompt": prompt}
    for key in _SAME:
        if body.get(key) is not None:
            native[key] = body[key]
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        native["n_predict"] = limit
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if extra_stops or stops:
        native["stop"] = list(dict.fromkeys([*extra_stops, *stops]))
    if body.get("logit_bias"):
        native["logit_bias"] = {k: float(v) for k, v in body["logit_bias"].items()}
    return native


def _response_format(body: JSON) -> Any:
    fmt = body.get("response_format")
    if fmt is None or fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return fmt.get("schema", {"type": "object"})
    return fmt["json_schema"]["schema"]


def _messages(body: JSON) -> list[Message]:
    out = []
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        out.append(Message(m["role"], content))
    return out


def _finish_reason(final: JSON) -> str:
    return "length" if final["stop_type"] == "limit" else "stop"


def _usage(final: JSON) -> JSON:
    prompt, completion = final["tokens_evaluated"], final["tokens_predicted"]
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _extras(final: JSON) -> JSON:
    out: JSON = {"timings": final["timings"]}
    for key in ("aborted", "timeout", "shutdown", "schema_valid", "schema_errors"):
        if key in final:
            out[key] = final[key]
    return out


def _logprob_entries(probs: list[JSON], top: int) -> list[JSON]:
    return [{"token": p["token"], "logprob": p["logprob"], "bytes": p["bytes"],
             "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
                              for t in p["top_logprobs"][:top]]}
            for p in probs]


def _text_logprobs(probs: list[JSON], top: int, offset: int) -> JSON:
    offsets = []
    for p in probs:
        offsets.append(offset)
        offset += len(p["token"])
    return {"tokens": [p["token"] for p in probs], "token_logprobs": [p["logprob"] for p in probs],
            "top_logprobs": [{t["token"]: t["logprob"] for t in p["top_logprobs"][:top]}
                             for p in probs],
            "text_offset": offsets}


# --- chat --------------------------------------------------------------------------------------
@openai.route("/v1/chat/completions", methods=["POST"])
@openai.route("/chat/completions", methods=["POST"])
async def chat_completions() -> Response:
    svc = service()
    body = validate("chat_completion", await read_json())
    prompt = svc.chat.prompt(_messages(body), svc.settings.system_prompt)
    native = _native_body(body, prompt, svc.chat.stops)
    schema = _response_format(body)
    if schema is not None:
        if "json_schema" in native or "grammar" in native:
            raise InvalidRequest("'response_format' cannot be combined with 'json_schema' or "
                                 "'grammar'", param="response_format")
        native["json_schema"] = schema
    top = body.get("top_logprobs") or 0
    if body.get("logprobs"):
        native["n_probs"] = max(top, 1)
    params = completion_params(native, default_n_predict=svc.settings.n_predict,
                               default_seed=svc.settings.seed)
    prepared = await svc.prepare(params)
    created = int(time.time())
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _chat_stream(svc, prepared, created, bool(body.get("logprobs")), top, include_usage)
    whole = await run_whole(svc, prepared)
    final = whole.final
    choice: JSON = {"index": 0, "message": {"role": "assistant", "content": final["content"]},
                    "finish_reason": _finish_reason(final), "logprobs": None}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": _logprob_entries(final["completion_probabilities"], top)}
    return json_response({
        "id": f"chatcmpl-{whole.state.job_id}", "object": "chat.completion", "created": created,
        "model": svc.model_name, "system_fingerprint": "sluice-0.1.0", "choices": [choice],
        "usage": _usage(final), **_extras(final)},
        headers={"X-Request-Id": str(whole.state.job_id)})


def _chat_stream(svc: Service, prepared: Prepared, created: int, logprobs: bool, top: int,
                 include_usage: bool) -> Response:
    job_id = svc.new_id()
    ident = f"chatcmpl-{job_id}"

    def chunk(delta: JSON, finish: str | None = None, logprobs: JSON | None = None,
              top_level: JSON | None = None) -> bytes:
        return sse.event({"id": ident, "object": "chat.completion.chunk", "created": created,
                          "model": svc.model_name, "system_fingerprint": "sluice-0.1.0",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                       "logprobs": logprobs}], **(top_level or {})})

    async def body() -> AsyncIterator[bytes]:
        first = True
        async for step in run_stream(svc, prepared, job_id):
            if step.kind == "ping":
                yield sse.PING
                continue
            if step.kind == "error":
                assert step.data is not None
                yield sse.event(step.data)
                return
            if first:
                first = False
                yield chunk({"role": "assistant", "content": None})
            data = step.data
            assert data is not None
            if step.kind == "token":
                probs = data.get("completion_probabilities")
                lp = {"content": _logprob_entries(probs, top)} if logprobs and probs else None
                if data["content"] or lp:
                    yield chunk({"content": data["content"]}, logprobs=lp)
                continue
            yield chunk({}, _finish_reason(data), top_level=_extras(data))
            if include_usage:
                yield sse.event({"id": ident, "object": "chat.completion.chunk",
                                 "created": created, "model": svc.model_name, "choices": [],
                                 "usage": _usage(data)})
            yield sse.DONE

    resp = Response(body(), status=200, headers={**sse.HEADERS, "X-Request-Id": str(job_id)})
    resp.timeout = None
    return resp


# --- text completions -------------------------------------------------------------------------
@openai.route("/v1/completions", methods=["POST"])
async def completions() -> Response:
    svc = service()
    body = validate("openai_completion", await read_json())
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    native = _native_body(body, prompt)
    top = body.get("logprobs") or 0
    if top:
        native["n_probs"] = top
    params = completion_params(native, default_n_predict=16 if "max_tokens" not in body
                               else svc.settings.n_predict, default_seed=svc.settings.seed)
    prepared = await svc.prepare(params)
    created = int(time.time())
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _text_stream(svc, prepared, created, top, include_usage)
    whole = await run_whole(svc, prepared)
    final = whole.final
    choice: JSON = {"index": 0, "text": final["content"], "finish_reason": _finish_reason(final),
                    "logprobs": None}
    if top:
        choice["logprobs"] = _text_logprobs(final["completion_probabilities"], top, 0)
    return json_response({
        "id": f"cmpl-{whole.state.job_id}", "object": "text_completion", "created": created,
        "model": svc.model_name, "choices": [choice], "usage": _usage(final), **_extras(final)},
        headers={"X-Request-Id": str(whole.state.job_id)})


def _text_stream(svc: Service, prepared: Prepared, created: int, top: int,
                 include_usage: bool) -> Response:
    job_id = svc.new_id()
    ident = f"cmpl-{job_id}"

    def chunk(text: str, finish: str | None, logprobs: JSON | None,
              top_level: JSON | None = None) -> bytes:
        return sse.event({"id": ident, "object": "text_completion", "created": created,
                          "model": svc.model_name,
                          "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                       "logprobs": logprobs}], **(top_level or {})})

    async def body() -> AsyncIterator[bytes]:
        offset = 0
        async for step in run_stream(svc, prepared, job_id):
            if step.kind == "ping":
                yield sse.PING
                continue
            data = step.data
            assert data is not None
            if step.kind == "error":
                yield sse.event(data)
                return
            if step.kind == "token":
                probs = data.get("completion_probabilities")
                lp = _text_logprobs(probs, top, offset) if top and probs else None
                offset += len(data["content"])
                if data["content"] or lp:
                    yield chunk(data["content"], None, lp)
                continue
            yield chunk("", _finish_reason(data), None, _extras(data))
            if include_usage:
                yield sse.event({"id": ident, "object": "text_completion", "created": created,
                                 "model": svc.model_name, "choices": [], "usage": _usage(data)})
            yield sse.DONE

    resp = Response(body(), status=200, headers={**sse.HEADERS, "X-Request-Id": str(job_id)})
    resp.timeout = None
    return resp


# --- models ----------------------------------------------------------------------------------
@openai.route("/v1/models", methods=["GET"])
@openai.route("/models", methods=["GET"])
async def models() -> Response:
    svc = service()
    info = svc.model.info
    return json_response({"object": "list", "data": [{
        "id": svc.model_name, "object": "model", "created": int(info.path.stat().st_mtime),
        "owned_by": "sluice",
        "meta": {"n_vocab": info.n_vocab, "n_ctx_train": info.n_ctx_train,
                 "n_params": info.n_params, "size": info.size_bytes,
                 "architecture": info.architecture}}]})
