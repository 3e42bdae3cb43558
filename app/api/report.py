"""What several families report, in one place: llama.cpp's ``timings`` and prompt progress,
Sluice's verdicts (``schema_valid``, ``tool_calls_valid``) and a model's metadata.

The families are peers: none imports another, and what more than one of them writes lives
here, so that a field cannot drift apart between them.
"""

from __future__ import annotations

import trio

from app.completion import Outcome, PromptProgress, Timings
from app.errors import JSON
from app.registry import Hosted
from app.tools import Reply
from app.turns import Turn, check_calls


def progress_fields(p: PromptProgress) -> JSON:
    return {"total": p.total, "cache": p.cache, "processed": p.processed, "time_ms": p.time_ms}


def timings(outcome: Outcome) -> JSON:
    return timing_fields(outcome.timings)


def timing_fields(t: Timings) -> JSON:
    """llama.cpp's ``timings``. The first token comes from the prompt's last batch, so the
    generation rate is over the decode steps after it (``predicted_n - 1``), as llama.cpp's."""
    steps = max(0, t.predicted_n - 1)
    timed = steps > 0 and t.predicted_ms > 0
    return {"cache_n": t.cache_n, "prompt_n": t.prompt_n, "prompt_ms": t.prompt_ms,
            "prompt_per_token_ms": t.prompt_ms / t.prompt_n if t.prompt_n else 0.0,
            "prompt_per_second": t.prompt_n * 1000.0 / t.prompt_ms if t.prompt_ms else 0.0,
            "predicted_n": t.predicted_n, "predicted_ms": t.predicted_ms,
            "predicted_per_token_ms": t.predicted_ms / steps if timed else 0.0,
            "predicted_per_second": steps * 1000.0 / t.predicted_ms if timed else 0.0}


def extras(outcome: Outcome, *, with_timings: bool = True) -> JSON:
    """Sluice's additions at the top level: timings, the interruption, the schema verdict.
    Anthropic's shape goes without ``timings`` (llama-server leaves them out there too, and
    its test suite checks that they are absent)."""
    out: JSON = {"timings": timings(outcome)} if with_timings else {}
    if outcome.interruption is not None:
        out[outcome.interruption.value] = True
    if outcome.schema is not None:
        out["schema_valid"] = outcome.schema.valid
        out["schema_errors"] = [e.as_dict() for e in outcome.schema.errors]
    return out


async def call_checks(reply: Reply, turn: Turn) -> JSON:
    """Sluice's report on the calls' arguments (``tool_calls_valid``, ``tool_call_errors``)."""
    if not reply.calls:
        return {}
    checks = await trio.to_thread.run_sync(check_calls, reply, turn.policy)
    out: JSON = {"tool_calls_valid": all(c.valid for c in checks)}
    errors = {c.call.id: list(c.errors) for c in checks if c.errors}
    if errors:
        out["tool_call_errors"] = errors
    return out


def model_meta(hosted: Hosted) -> JSON:
    runtime = hosted.runtime
    if runtime is None:
        return {}
    info = runtime.model.info
    return {"n_vocab": info.n_vocab, "n_ctx_train": info.n_ctx_train,
            "n_params": info.n_params, "size": info.size_bytes,
            "architecture": info.architecture}
