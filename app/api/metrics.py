"""``GET /metrics``: Prometheus text exposition with llama.cpp's ``llamacpp:`` names.

Off unless the server runs with ``--metrics`` (501 otherwise), as in llama.cpp.
"""

from __future__ import annotations

from quart import Blueprint, Response

from app.api.common import service
from app.errors import NotSupported

metrics = Blueprint("metrics", __name__)


@metrics.route("/metrics", methods=["GET"])
async def prometheus() -> Response:
    svc = service()
    if not svc.settings.metrics:
        raise NotSupported("metrics are disabled; start the server with --metrics")
    engine = svc.engine
    c = engine.counters
    busy = sum(1 for s in engine.slots if s.job is not None)
    cells = sum(len(s.cache) for s in engine.slots)
    capacity = engine.slot_ctx * len(engine.slots)
    rows = [
        ("counter", "prompt_tokens_total", "Prompt tokens evaluated.", c.prompt_tokens_total),
        ("counter", "tokens_predicted_total", "Tokens generated.", c.tokens_predicted_total),
        ("counter", "n_decode_total", "llama_decode calls.", c.decode_calls_total),
        ("gauge", "n_busy_slots_per_decode", "Average busy slots per llama_decode call.",
         c.busy_slots_total / c.decode_calls_total if c.decode_calls_total else 0.0),
        ("gauge", "kv_cache_usage_ratio", "KV cache cells in use / cells.",
         cells / capacity if capacity else 0.0),
        ("gauge", "kv_cache_tokens", "KV cache cells in use.", cells),
        ("gauge", "requests_processing", "Requests holding a slot.", busy),
        ("gauge", "requests_deferred", "Requests waiting for a slot.", engine.n_waiting),
    ]
    lines: list[str] = []
    for kind, name, help_text, value in rows:
        lines += [f"# HELP llamacpp:{name} {help_text}", f"# TYPE llamacpp:{name} {kind}",
                  f"llamacpp:{name} {value}"]
    cache = engine.prompt_cache
    for kind, name, help_text, value in [
        ("counter", "prompt_cache_hits_total", "Requests that started from a saved or another "
         "slot's prefix (--cache-ram).", cache.stats.hits if cache is not None else 0),
        ("counter", "prompt_cache_tokens_restored_total", "Prompt tokens those requests did not "
         "evaluate.", cache.stats.tokens_restored if cache is not None else 0),
        ("counter", "prompt_cache_saves_total", "Slot states saved to host memory.",
         cache.stats.saves if cache is not None else 0),
        ("gauge", "prompt_cache_bytes", "Host memory held by saved slot states.",
         cache.bytes if cache is not None else 0),
        ("gauge", "prompt_cache_entries", "Saved slot states.", len(cache) if cache is not None else 0),
        ("gauge", "decode_threads", "Threads decoding generated tokens now (--adapt-threads).",
         engine.tuner.current if engine.tuner is not None else 0),
        ("counter", "decode_thread_switches_total", "Thread-count changes kept by the tuner.",
         engine.tuner.switches if engine.tuner is not None else 0),
    ]:
        lines += [f"# HELP sluice:{name} {help_text}", f"# TYPE sluice:{name} {kind}",
                  f"sluice:{name} {value}"]
    for name, help_text, value in [
        ("requests_total", "Requests submitted to the engine.", c.requests_total),
        ("requests_started_total", "Requests that got a slot.", c.requests_started_total),
        ("requests_dropped_queued_total", "Requests cancelled while still queued.",
         c.requests_dropped_queued_total),
    ]:
        lines += [f"# HELP sluice:{name} {help_text}", f"# TYPE sluice:{name} counter",
                  f"sluice:{name} {value}"]
    return Response("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
