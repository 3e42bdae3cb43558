"""Typed request objects shared by every API family.

A body is validated against its JSON Schema first (``app.validation``); these
functions then turn the plain dict into frozen objects, resolving defaults from
the settings, so each parameter is read in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.engine.sampling import DEFAULT_SAMPLERS, SamplingParams
from app.errors import JSON, InvalidRequest

PromptPart = str | int


@dataclass(frozen=True, slots=True)
class CompletionParams:
    prompt: tuple[PromptPart, ...]
    sampling: SamplingParams  # seed -1 and logit_bias until the service resolves them
    # (token id or text, bias); text is tokenized by the service, every token of it biased
    logit_bias: tuple[tuple[int | str, float], ...] = ()
    n_predict: int = -1
    stops: tuple[str, ...] = ()
    grammar: str | None = None
    json_schema: Any = None
    cache_prompt: bool = True
    id_slot: int = -1
    stream: bool = False
    n_keep: int = 0


def _logit_bias(raw: Any) -> tuple[tuple[int | str, float], ...]:
    pairs: list[tuple[Any, Any]] = list(raw.items()) if isinstance(raw, dict) else list(raw)
    out: list[tuple[int | str, float]] = []
    for key, value in pairs:
        bias = -math.inf if value is False else float(value)
        if isinstance(key, str) and key.lstrip("-").isdigit() and isinstance(raw, dict):
            key = int(key)
        out.append((key, bias))
    return tuple(out)


def completion_params(body: JSON, *, default_n_predict: int, default_seed: int) -> CompletionParams:
    """Build :class:`CompletionParams` from a body already checked by ``schemas/completion.json``."""
    if "grammar" in body and "json_schema" in body:
        raise InvalidRequest("'grammar' and 'json_schema' cannot be used together", param="grammar")
    prompt = body["prompt"]
    parts: tuple[PromptPart, ...] = (prompt,) if isinstance(prompt, str) else tuple(prompt)
    stop = body.get("stop", ())
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if "" in stops:
        raise InvalidRequest("invalid value for 'stop': empty stop string", param="stop")
    defaults = SamplingParams()
    sampling = SamplingParams(
        temperature=float(body.get("temperature", defaults.temperature)),
        top_k=int(body.get("top_k", defaults.top_k)),
        top_p=float(body.get("top_p", defaults.top_p)),
        min_p=float(body.get("min_p", defaults.min_p)),
        typical_p=float(body.get("typical_p", defaults.typical_p)),
        repeat_penalty=float(body.get("repeat_penalty", defaults.repeat_penalty)),
        repeat_last_n=int(body.get("repeat_last_n", defaults.repeat_last_n)),
        presence_penalty=float(body.get("presence_penalty", defaults.presence_penalty)),
        frequency_penalty=float(body.get("frequency_penalty", defaults.frequency_penalty)),
        mirostat=int(body.get("mirostat", defaults.mirostat)),
        mirostat_tau=float(body.get("mirostat_tau", defaults.mirostat_tau)),
        mirostat_eta=float(body.get("mirostat_eta", defaults.mirostat_eta)),
        seed=int(body.get("seed", default_seed)),
        ignore_eos=bool(body.get("ignore_eos", False)),
        n_probs=int(body.get("n_probs", 0)),
        samplers=tuple(body.get("samplers", DEFAULT_SAMPLERS)),
    )
    raw_n: int = body["n_predict"] if "n_predict" in body else body.get("max_tokens", default_n_predict)
    n_predict = int(raw_n)
    return CompletionParams(
        prompt=parts,
        sampling=sampling,
        logit_bias=_logit_bias(body.get("logit_bias", ())),
        n_predict=int(n_predict),
        stops=stops,
        grammar=body.get("grammar"),
        json_schema=body.get("json_schema"),
        cache_prompt=bool(body.get("cache_prompt", True)),
        id_slot=int(body.get("id_slot", -1)),
        stream=bool(body.get("stream", False)),
        n_keep=int(body.get("n_keep", 0)),
    )
