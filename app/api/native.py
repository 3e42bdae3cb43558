"""llama.cpp's native routes: /completion, /health, /props, /slots, and abort by id.

Abort: every completion reports its id (the ``X-Request-Id`` header, and ``id``
in every stream event and in the final object). ``POST /completion/{id}/abort``
ends that request: its generation stops at the next engine step, a stream ends
with its final object carrying ``"aborted": true``, a non-streaming request
returns what was generated so far, likewise marked. Unknown or finished ids
give 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, request

from app import sse
from app.api.common import json_response, read_json, run_stream, run_whole, service
from app.errors import NotFound, Unavailable
from app.requests import completion_params
from app.service import Prepared, Service, convert_schema
from app.validation import validate

native = Blueprint("native", __name__)


@native.route("/completion", methods=["POST"])
@native.route("/completions", methods=["POST"])
async def completion() -> Response:
    svc = service()
    body = validate("completion", await read_json())
    params = completion_params(body, default_n_predict=svc.settings.n_predict,
                               default_seed=svc.settings.seed)
    prepared = await svc.prepare(params)
    if params.stream:
        return _stream(svc, prepared)
    whole = await run_whole(svc, prepared)
    return json_response(whole.final, headers={"X-Request-Id": str(whole.state.job_id)})


def _stream(svc: Service, prepared: Prepared) -> Response:
    job_id = svc.new_id()  # known now for the header; the body submits the request

    async def body() -> AsyncIterator[bytes]:
        async for step in run_stream(svc, prepared, job_id):
            if step.kind == "ping":
                yield sse.PING
            else:
                assert step.data is not None
                yield sse.event(step.data)

    resp = Response(body(), status=200, headers={**sse.HEADERS, "X-Request-Id": str(job_id)})
    resp.timeout = None
    return resp


@native.route("/completion/<int:job_id>/abort", methods=["POST"])
@native.route("/completions/<int:job_id>/abort", methods=["POST"])
async def abort(job_id: int) -> Response:
    if not service().abort(job_id):
        raise NotFound(f"no running completion with id {job_id}")
    return json_response({"id": job_id, "aborted": True})


@native.route("/health", methods=["GET"])
async def health() -> Response:
    svc = service()
    if not svc.engine.alive:
        raise Unavailable("the engine is not running")
    return json_response({"status": "ok"})


@native.route("/slots", methods=["GET"])
async def slots() -> Response:
    svc = service()
    infos = svc.engine.slot_infos()
    if request.args.get("fail_on_no_slot") in ("1", "true") and all(i.is_processing for i in infos):
        raise Unavailable("no slot available")
    return json_response([
        {"id": i.id, "n_ctx": i.n_ctx, "is_processing": i.is_processing, "state": i.state,
         "id_task": i.id_task, "n_cached": i.n_cached, "n_decoded": i.n_decoded,
         "n_prompt_tokens": i.n_prompt}
        for i in infos])


@native.route("/props", methods=["GET"])
async def props() -> Response:
    svc = service()
    info = svc.model.info
    st = svc.settings
    return json_response({
        "default_generation_settings": {
            "n_ctx": svc.engine.slot_ctx, "n_predict": st.n_predict, "seed": st.seed,
            "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
        },
        "total_slots": len(svc.engine.slots),
        "model_path": str(info.path),
        "model_alias": svc.model_name,
        "chat_template": svc.chat.source,
        "chat_template_name": svc.chat.name,
        "n_ctx": svc.engine.ctx.n_ctx,
        "n_vocab": info.n_vocab,
        "build_info": "sluice 0.1.0 (llama-cpp-python 0.3.36)",
    })


@native.route("/grammar", methods=["POST"])
async def grammar_route() -> Response:
    """Convert a JSON Schema to GBNF: ``{"schema": ...}`` -> ``{"gbnf", "enforced", ...}``."""
    body = validate("grammar", await read_json())
    conversion = await trio.to_thread.run_sync(lambda: convert_schema(
        body["schema"], field="schema", prop_order=body.get("prop_order"),
        strict=bool(body.get("strict", False)), dotall=bool(body.get("dotall", False))))
    return json_response({"gbnf": conversion.gbnf, "enforced": list(conversion.enforced),
                          "validated_only": list(conversion.validated_only),
                          "ignored": list(conversion.ignored)})
