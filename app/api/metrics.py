"""``GET /metrics``: Prometheus text exposition with llama.cpp's ``llamacpp:`` names.

Off unless the server runs with ``--metrics`` (501 otherwise), as in llama.cpp. Series
carry a ``model`` label (several models can be loaded).
"""

from __future__ import annotations

import time

from quart import Response, request

from app.api.common import Family, service
from app.errors import NotSupported
from app.hosted import ModelStatus
from app.runtime import RuntimeLike

metrics = Family("metrics", __name__)

#: when this process started, for llama.cpp's ``Process-Start-Time-Unix`` header
PROCESS_START = time.time()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _engine_rows(runtime: RuntimeLike) -> list[tuple[str, str, str, str, float]]:
    """(kind, prefix, name, help, value) for one loaded model's engine."""
    engine = runtime.engine
    c = engine.counters
    busy = sum(1 for s in engine.slots if s.job is not None)
    cells = sum(len(s.cache) for s in engine.slots)
    capacity = engine.slot_ctx * len(engine.slots)
    cache = engine.prompt_cache
    tuner = engine.tuner
    return [
        ("counter", "llamacpp", "prompt_tokens_total", "Prompt tokens evaluated.",
         c.prompt_tokens_total),
        ("counter", "llamacpp", "prompt_tokens_cached_total", "Prompt tokens taken from a "
         "cache instead.", c.prompt_tokens_cached_total),
        ("counter", "llamacpp", "prompt_seconds_total", "Prompt processing time.",
         round(c.prompt_seconds_total, 6)),
        ("counter", "llamacpp", "tokens_predicted_total", "Tokens generated.",
         c.tokens_predicted_total),
        ("counter", "llamacpp", "tokens_predicted_seconds_total", "Generation time.",
         round(c.predicted_seconds_total, 6)),
        ("counter", "llamacpp", "n_decode_total", "llama_decode calls.", c.decode_calls_total),
        ("counter", "llamacpp", "n_tokens_max", "The most tokens a slot has held.",
         c.n_tokens_max),
        # no speculative decoding here: llama.cpp's series, truthfully zero
        ("counter", "llamacpp", "spec_decode_num_draft_tokens_total", "Draft tokens "
         "(speculative decoding is not used).", 0),
        ("counter", "llamacpp", "spec_decode_num_accepted_tokens_total", "Accepted draft tokens "
         "(speculative decoding is not used).", 0),
        ("counter", "llamacpp", "spec_decode_num_drafts_total", "Drafts (speculative decoding "
         "is not used).", 0),
        ("gauge", "llamacpp", "prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
         c.prompt_tokens_total / c.prompt_seconds_total if c.prompt_seconds_total else 0.0),
        ("gauge", "llamacpp", "predicted_tokens_seconds", "Average generation throughput in "
         "tokens/s.", c.tokens_predicted_total / c.predicted_seconds_total
         if c.predicted_seconds_total else 0.0),
        ("gauge", "llamacpp", "n_busy_slots_per_decode", "Average busy slots per llama_decode call.",
         c.busy_slots_total / c.decode_calls_total if c.decode_calls_total else 0.0),
        ("gauge", "llamacpp", "kv_cache_usage_ratio", "KV cache cells in use / cells.",
         cells / capacity if capacity else 0.0),
        ("gauge", "llamacpp", "kv_cache_tokens", "KV cache cells in use.", cells),
        ("gauge", "llamacpp", "requests_processing", "Requests holding a slot.", busy),
        ("gauge", "llamacpp", "requests_deferred", "Requests waiting for a slot.", engine.n_waiting),
        ("counter", "sluice", "prompt_cache_hits_total", "Requests that started from a saved or "
         "another slot's prefix (--cache-ram).", cache.stats.hits if cache is not None else 0),
        ("counter", "sluice", "prompt_cache_tokens_restored_total", "Prompt tokens those requests "
         "did not evaluate.", cache.stats.tokens_restored if cache is not None else 0),
        ("counter", "sluice", "prompt_cache_saves_total", "Slot states saved to host memory.",
         cache.stats.saves if cache is not None else 0),
        ("gauge", "sluice", "prompt_cache_bytes", "Host memory held by saved slot states.",
         cache.bytes if cache is not None else 0),
        ("gauge", "sluice", "prompt_cache_entries", "Saved slot states.",
         len(cache) if cache is not None else 0),
        ("gauge", "sluice", "decode_threads", "Threads decoding generated tokens now "
         "(--adapt-threads).", tuner.current if tuner is not None else 0),
        ("counter", "sluice", "decode_thread_switches_total", "Thread-count changes kept by the "
         "tuner.", tuner.switches if tuner is not None else 0),
        ("counter", "sluice", "requests_total", "Requests submitted to the engine.",
         c.requests_total),
        ("counter", "sluice", "requests_started_total", "Requests that got a slot.",
         c.requests_started_total),
        ("counter", "sluice", "requests_dropped_queued_total", "Requests cancelled while still "
         "queued.", c.requests_dropped_queued_total),
    ]


@metrics.route("/metrics", methods=["GET"])
async def prometheus() -> Response:
    """Every series carries ``model="<name>"``: one per loaded model (engine counters start
    again from 0 when a model is loaded again), and per known model its status and how
    often it was loaded and unloaded."""
    svc = service()
    if not svc.settings.metrics:
        raise NotSupported("metrics are disabled; start the server with --metrics")
    families: dict[str, tuple[str, str, list[str]]] = {}
    # llama.cpp's shape, series without labels, for the one model it is asked about (?model=)
    # or, with one model configured (not router mode), for the default model
    asked = request.args.get("model")
    plain = svc.registry.find(asked).name if asked else (
        None if svc.registry.router else svc.registry.default)

    def add(kind: str, name: str, help_text: str, model: str, value: float) -> None:
        family = families.setdefault(name, (kind, help_text, []))
        if model == plain and name.startswith("llamacpp:"):
            family[2].append(f"{name} {value}")
        elif not asked:
            family[2].append(f'{name}{{model="{_label(model)}"}} {value}')

    for hosted in svc.registry.all():
        add("gauge", "sluice:model_loaded", "1 while the model is loaded.", hosted.name,
            int(hosted.status is ModelStatus.LOADED))
        add("counter", "sluice:model_loads_total", "Times the model was loaded.", hosted.name,
            hosted.loads)
        add("counter", "sluice:model_unloads_total", "Times the model was unloaded.",
            hosted.name, hosted.unloads)
        add("counter", "sluice:model_load_failures_total", "Failed loads.", hosted.name,
            hosted.failures)
        add("gauge", "sluice:model_load_seconds", "How long the last load took.", hosted.name,
            round(hosted.load_s, 3))
        runtime = hosted.runtime
        if hosted.status is ModelStatus.LOADED and runtime is not None:
            for kind, prefix, name, help_text, value in _engine_rows(runtime):
                add(kind, f"{prefix}:{name}", help_text, hosted.name, value)
    lines: list[str] = []
    for name, (kind, help_text, samples) in families.items():
        if samples:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    resp = Response("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
    resp.headers["Process-Start-Time-Unix"] = str(int(PROCESS_START))
    return resp
