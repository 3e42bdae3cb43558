"""What several families report, in one place: llama.cpp's ``timings``, prompt progress and
final object, Sluice's verdicts (``schema_valid``, ``tool_calls_valid``) and a model's
metadata.

The families are peers: none imports another, and what more than one of them writes lives
here, so that a field cannot drift apart between them.
"""

from __future__ import annotations

import math

import trio

from app.completion import (
    CompletionRequest,
    Outcome,
    PromptProgress,
    StopType,
    Timings,
    TokenLogprobs,
    TokenProb,
)
from app.errors import JSON
from app.hosted import Hosted
from app.requests import sampling_report
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


# --- llama.cpp's native final object, which its OpenAI routes carry as ``__verbose`` ---------
def _prob(p: TokenProb, post: bool = False) -> JSON:
    out: JSON = {"id": p.id, "token": p.text, "bytes": list(p.piece)}
    if post:  # llama.cpp's post_sampling_probs: probabilities, not log-probabilities
        out["prob"] = math.exp(p.logprob)
    else:
        out["logprob"] = p.logprob
    return out


def probabilities(logprobs: tuple[TokenLogprobs, ...], post: bool = False) -> list[JSON]:
    """``completion_probabilities`` entries (``post``: after the sampler chain, as
    ``prob``/``top_probs``)."""
    key = "top_probs" if post else "top_logprobs"
    return [{**_prob(lp.chosen, post), key: [_prob(t, post) for t in lp.top]} for lp in logprobs]


def generation_settings(outcome: Outcome) -> JSON:
    return request_params(outcome.reported.request, outcome.reported.grammar)


def request_params(req: CompletionRequest, grammar: str | None) -> JSON:
    """What a request runs with, by llama.cpp's names (``generation_settings``, a slot's
    ``params``)."""
    return {"n_predict": req.n_predict, "max_tokens": req.n_predict,
            **sampling_report(req.sampling), "stop": list(req.stops),
            "cache_prompt": req.cache_prompt, "grammar": grammar or "",
            "n_keep": req.n_keep, "n_discard": req.n_discard, "n_indent": req.n_indent,
            "n_cache_reuse": req.n_cache_reuse,
            "t_max_predict_ms": req.t_max_predict_ms,
            "timings_per_token": req.timings_per_token, "return_progress": req.return_progress,
            "lora": [{"id": i, "scale": s} for i, s in req.lora or ()],
            # llama.cpp's: -inf (a ban, ignore_eos's end-of-generation tokens) as null
            "logit_bias": [{"token": t, "bias": b if math.isfinite(b) else None}
                           for t, b in req.sampling.logit_bias]}


def final_object(outcome: Outcome, *, streamed: bool = False) -> JSON:
    """llama.cpp's final object: the non-streamed reply, or (``streamed``) the last stream
    event, whose ``content`` and ``tokens`` are empty and which has no
    ``completion_probabilities``, as llama.cpp's (the partials carried them: a client that
    appends every event's ``content`` must not show the answer twice)."""
    stop = outcome.stop
    out: JSON = {
        "index": 0, "id": outcome.id, "content": "" if streamed else outcome.text,
        # llama.cpp lists the generated ids only when asked (return_tokens)
        "tokens": list(outcome.token_ids) if outcome.reported.request.return_tokens and not
        streamed else [],
        "id_slot": outcome.id_slot, "stop": True, "model": outcome.reported.model,
        "tokens_predicted": outcome.n_predicted, "tokens_evaluated": outcome.n_prompt,
        "tokens_cached": outcome.tokens_cached, "prompt": outcome.reported.request.prompt_text,
        "has_new_line": "\n" in outcome.text, "truncated": outcome.truncated,
        "stop_type": stop.value, "stopped_eos": stop is StopType.EOS,
        "stopped_word": stop is StopType.WORD, "stopped_limit": stop is StopType.LIMIT,
        "stopping_word": outcome.stopping_word,
        "generation_settings": generation_settings(outcome), "timings": timings(outcome),
    }
    if outcome.interruption is not None:
        out[outcome.interruption.value] = True
    if outcome.grammar_stats is not None:
        out["grammar_stats"] = {"rejections": outcome.grammar_stats[0],
                                "full_passes": outcome.grammar_stats[1],
                                "narrowed_passes": outcome.grammar_stats[2]}
    if outcome.reported.request.sampling.n_probs > 0 and not streamed:
        out["completion_probabilities"] = probabilities(
            outcome.logprobs, outcome.reported.request.sampling.post_sampling_probs)
    if outcome.schema is not None:
        out["schema_valid"] = outcome.schema.valid
        out["schema_errors"] = [e.as_dict() for e in outcome.schema.errors]
    return out


def verbose(outcome: Outcome) -> JSON:
    """llama.cpp's ``__verbose`` (a request's ``verbose``, or the server's ``--verbose``): the
    native final object of the same reply, whose ``prompt`` is the text the template made."""
    return final_object(outcome)
