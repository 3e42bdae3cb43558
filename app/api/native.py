"""llama.cpp's native routes and wire shape: /completion, /health, /props, /slots, abort by id.

This module owns llama.cpp's reply shape (:func:`partial`, :func:`final_object`)
as ``openai.py`` owns OpenAI's; ``/infill`` reuses it.

Abort: every completion reports its id (the ``X-Request-Id`` header, and ``id``
in every stream event and in the final object). ``POST /completion/{id}/abort``
ends that request: its generation stops at the next engine step, a stream ends
with its final object carrying ``"aborted": true``, a non-streaming request
returns what was generated so far, likewise marked. Unknown or finished ids
give 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import trio
from quart import Response, request

from app import sse
from app.api.common import (
    Family,
    json_response,
    query_model,
    read_valid,
    run_all,
    service,
    streamed,
    submit_all,
    with_model,
)
from app.api.drive import SseWire, drive
from app.api.report import final_object, probabilities, progress_fields, request_params, timing_fields
from app.bound import Bound, SlotInfo
from app.completion import (
    Delta,
    Outcome,
    PromptProgress,
    Timings,
)
from app.errors import JSON, NotFound, NotSupported, ServerError, Unavailable
from app.hosted import ModelStatus
from app.prepare import convert_schema
from app.requests import Defaults, choices_wanted, native_request, prompt_list, sampling_report
from app.running import Completion
from app.runtime import Facts, facts_of
from app.settings import Settings

native = Family("native", __name__)


# --- llama.cpp's wire shape ----------------------------------------------------------------------
def partial(delta: Delta, completion: Completion) -> JSON:
    """The stream event of one delta."""
    out: JSON = {"index": 0, "content": delta.text, "tokens": list(delta.token_ids), "stop": False,
                 "id_slot": delta.id_slot, "id": completion.id,
                 "tokens_predicted": delta.n_predicted, "tokens_evaluated": completion.n_prompt}
    if delta.timings is not None:
        out["timings"] = timing_fields(delta.timings)
    if delta.logprobs:
        out["completion_probabilities"] = probabilities(
            delta.logprobs, completion.prepared.request.sampling.post_sampling_probs)
    return out


def progress_event(p: PromptProgress, completion: Completion) -> JSON:
    """A stream event of prompt progress (``return_progress``), as llama.cpp's."""
    out: JSON = {"index": 0, "content": "", "tokens": [], "stop": False, "id_slot": -1,
                 "id": completion.id, "tokens_predicted": 0, "tokens_evaluated": p.total,
                 "prompt_progress": progress_fields(p)}
    if completion.prepared.request.timings_per_token:
        out["timings"] = timing_fields(Timings(prompt_n=p.processed - p.cache,
                                               prompt_ms=p.time_ms, predicted_n=0,
                                               predicted_ms=0.0, cache_n=p.cache))
    return out


def nested_fields(paths: list[str], obj: JSON) -> JSON:
    """llama.cpp's ``response_fields``: the values at ``paths`` (``a/b``), keyed by the path;
    paths that lead nowhere are left out."""
    out: JSON = {}
    for path in paths:
        current: object = obj
        for key in path.split("/"):
            if not isinstance(current, dict) or key not in current:
                break
            current = current[key]
        else:
            out[path] = current
    return out


class NativeStream(SseWire):
    """llama.cpp's stream (a :class:`~app.api.drive.StreamWire`): partials, then the final
    object. Several completions share one stream as llama.cpp's do: each event carries its
    ``index``, each completion ends with its own final event."""

    def __init__(self, completions: Sequence[Completion],
                 response_fields: list[str] | None = None) -> None:
        self.completions = completions
        self.fields = response_fields
        self.indexed = len(completions) > 1

    def _event(self, index: int, obj: JSON) -> list[bytes]:
        return [sse.event({**obj, "index": index} if self.indexed else obj)]

    def begin(self) -> list[bytes]:
        return [sse.PING]  # headers and a first byte leave at once, even while queued

    def delta(self, index: int, item: Delta) -> list[bytes]:
        return self._event(index, partial(item, self.completions[index]))

    def progress(self, index: int, item: PromptProgress) -> list[bytes]:
        return self._event(index, progress_event(item, self.completions[index]))

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        final = final_object(outcome, streamed=True)
        if self.indexed:
            final = {**final, "index": index}
        return [sse.event(nested_fields(self.fields, final) if self.fields else final)]

    def failure(self, index: int, message: str) -> list[bytes]:
        return [sse.event(ServerError(message).body())]


def events(m: Bound, completions: Sequence[Completion],
           response_fields: list[str] | None = None) -> AsyncIterator[bytes]:
    """The SSE body of a native stream of one completion or several."""
    return drive(m, completions, NativeStream(completions, response_fields),
                 m.settings.queue_ping_interval_s)


# --- routes ---------------------------------------------------------------------------------------
@native.route("/completion", methods=["POST"])
@native.route("/completions", methods=["POST"])
@with_model("completion")
async def completion(m: Bound, body: JSON) -> Response:
    fields = body.get("response_fields")
    prompts = prompt_list(body["prompt"])
    n = choices_wanted(body, len(prompts), len(m.engine.slots))
    if len(prompts) * n > 1:
        # llama.cpp's array reply: each prompt's n_cmpl replies in turn, "index" counting them
        requests = [native_request(body, m.defaults, prompt=p) for p in prompts for _ in range(n)]
        if body.get("stream"):
            several = await submit_all(m, requests)
            return streamed(events(m, several, fields), several[0].id)
        completions, outcomes = await run_all(m, requests)
        replies = []
        for i, outcome in enumerate(outcomes):
            one = {**final_object(outcome), "index": i}
            replies.append(nested_fields(fields, one) if fields else one)
        return json_response(replies, headers={"X-Request-Id": str(completions[0].id)})
    completion = await m.submit(native_request(body, m.defaults, prompt=prompts[0]))
    if body.get("stream"):
        return streamed(events(m, [completion], fields), completion.id)
    outcome = await completion.result()
    out = final_object(outcome)
    return json_response(nested_fields(fields, out) if fields else out,
                         headers={"X-Request-Id": str(outcome.id)})


@native.route("/completion/<int:job_id>/abort", methods=["POST"])
@native.route("/completions/<int:job_id>/abort", methods=["POST"])
async def abort(job_id: int) -> Response:
    if not service().abort(job_id):
        raise NotFound(f"no running completion with id {job_id}")
    return json_response({"id": job_id, "aborted": True})


@native.route("/health", methods=["GET"])
@native.route("/v1/health", methods=["GET"])
async def health() -> Response:
    """200 while the server can serve: 503 while the default model loads, when a loaded
    model's engine died, or while shutting down. A model that is merely unloaded (idle,
    evicted) loads on demand, so it does not make the server unhealthy."""
    svc = service()
    if svc.shutting_down:
        raise Unavailable("the server is shutting down")
    default = svc.registry.default_hosted
    if default is not None and default.status is ModelStatus.LOADING:
        raise Unavailable("loading model")
    for hosted in svc.registry.loaded():
        if hosted.runtime is not None and not hosted.runtime.engine.alive:
            raise Unavailable(f"the engine of model {hosted.name!r} is not running")
    return json_response({"status": "ok"})


@native.route("/slots", methods=["GET"])
async def slots() -> Response:
    if not service().settings.slots_endpoint:
        raise NotSupported("this server does not serve the slots endpoint; start it with --slots")
    return await _slots()


@query_model
async def _slots(svc: Bound) -> Response:
    infos = svc.slot_infos()
    if request.args.get("fail_on_no_slot") in ("1", "true") and all(i.is_processing for i in infos):
        raise Unavailable("no slot available")
    return json_response([slot_object(i) for i in infos])


def slot_object(i: SlotInfo) -> JSON:
    """llama.cpp's slot: ``params``, ``next_token`` and ``prompt`` while it runs a request."""
    out: JSON = {"id": i.id, "n_ctx": i.n_ctx, "speculative": False,
                 "is_processing": i.is_processing, "state": i.state, "id_task": i.id_task,
                 "n_cached": i.n_cached, "n_decoded": i.n_decoded, "n_prompt_tokens": i.n_prompt}
    running = service().running(i.id_task) if i.is_processing else None
    if running is not None:
        req = running.prepared.request
        out["params"] = request_params(req, running.prepared.grammar)
        out["next_token"] = [{"has_next_token": True, "n_decoded": i.n_decoded,
                              "n_remain": req.n_predict - i.n_decoded if req.n_predict >= 0
                              else -1}]
        out["prompt"] = req.prompt_text
    return out


@native.route("/props", methods=["GET"])
async def props() -> Response:
    """llama.cpp's ``GET /props``, from what was known of the model when it was loaded: asking
    is not using it, so it neither keeps the model awake nor wakes one unloaded for idleness
    (``--sleep-idle-seconds``), which shows ``is_sleeping: true``, as llama.cpp's does. Only
    a model never loaded yet is loaded to answer."""
    svc = service()
    name = request.args.get("model") or None
    hosted = svc.peek(name)
    if hosted.facts is not None:
        return json_response(_props_body(hosted.facts, hosted.spec.settings(svc.settings),
                                         svc.defaults, hosted.name,
                                         sleeping=hosted.status is not ModelStatus.LOADED))
    async with svc.use(name) as bound:
        return json_response(_props_body(facts_of(bound.runtime), bound.settings,
                                         bound.defaults, bound.name, sleeping=False))


def _props_body(facts: Facts, st: Settings, defaults: Defaults, name: str, *,
                sleeping: bool) -> JSON:
    sampling = sampling_report(defaults.sampling)
    params = {**sampling, "max_tokens": st.n_predict, "n_predict": st.n_predict,
              "n_keep": defaults.n_keep, "n_discard": 0, "stream": False,
              "n_probs": defaults.sampling.n_probs, "min_keep": 0,
              "reasoning_format": st.reasoning_format, "timings_per_token": False,
              "post_sampling_probs": False, "lora": []}
    info = facts.info
    return {
        # llama.cpp's shape (``params``), and the flat one of its earlier versions
        "default_generation_settings": {"n_ctx": facts.slot_ctx, "params": params,
                                        "n_predict": st.n_predict, **sampling},
        "total_slots": facts.total_slots,
        "model_path": str(info.path),
        "model_alias": name,
        "modalities": {"vision": False, "video": False, "audio": False},
        "endpoint_slots": st.slots_endpoint, "endpoint_props": st.props_endpoint,
        "endpoint_metrics": st.metrics, "ui": st.webui,
        "chat_template": facts.chat_source,
        "chat_template_name": facts.chat_name,
        "bos_token": facts.bos_text, "eos_token": facts.eos_text,
        "is_sleeping": sleeping,
        "n_ctx": facts.n_ctx,
        "n_vocab": info.n_vocab,
        "build_info": "sluice 0.1.0 (llama-cpp-python 0.3.36)",
    }


@native.route("/props", methods=["POST"])
async def change_props() -> Response:
    """llama.cpp's ``POST /props``: 501 unless started with ``--props``; it changes nothing yet
    (llama.cpp's neither), so it answers ``{"success": true}``."""
    if not service().settings.props_endpoint:
        raise NotSupported("this server does not support changing global properties; start it "
                           "with --props")
    return json_response({"success": True})


@native.route("/grammar", methods=["POST"])
async def grammar_route() -> Response:
    """Convert a JSON Schema to GBNF: ``{"schema": ...}`` -> ``{"gbnf", "enforced", ...}``."""
    body = await read_valid("grammar")
    conversion = await trio.to_thread.run_sync(lambda: convert_schema(
        body["schema"], field="schema", prop_order=body.get("prop_order"),
        strict=bool(body.get("strict", False) or service().settings.schema_strict),
        spec=body.get("schema_mode", service().settings.schema_mode) == "spec",
        grammar_only=bool(body.get("grammar_only", False)),
        dotall=bool(body.get("dotall", False))))
    return json_response({"gbnf": conversion.gbnf, "enforced": list(conversion.enforced),
                          "validated_only": list(conversion.validated_only),
                          "ignored": list(conversion.ignored),
                          "unchecked": list(conversion.unchecked)})
