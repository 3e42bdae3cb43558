"""Building typed requests from bodies a family has already checked against its schema.

Each API family validates its body against its own ``schemas/*.json`` (types,
ranges, unknown fields), then builds a :class:`~app.completion.CompletionRequest`
with these helpers. Sampling fields are read through one table derived from
:class:`~app.completion.SamplingParams`, so a parameter means the same on every
route. Imports no llama_cpp: request parsing is testable without the engine.
"""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from app.completion import (
    SCHEMA_MODES,
    CompletionRequest,
    Constraint,
    GrammarConstraint,
    SamplingParams,
    SchemaConstraint,
    SchemaMode,
)
from app.errors import InvalidRequest
from app.settings import Settings

_TOKEN_ID = re.compile(r"-?[0-9]{1,10}")  # ASCII digits only: "²".isdigit() is True

#: sampling field name -> the Python type a wire value is coerced to
_HINTS = typing.get_type_hints(SamplingParams)
SAMPLING_FIELDS: dict[str, Any] = {
    f.name: _HINTS[f.name] for f in fields(SamplingParams) if f.name != "logit_bias"}


@dataclass(frozen=True, slots=True)
class Defaults:
    """Server-wide defaults a request falls back to (from the settings)."""

    n_predict: int = -1
    seed: int = -1
    n_keep: int = 0
    cache_prompt: bool = True
    #: the server's default constraint (--grammar / --json-schema), for requests without one
    constraint: Constraint | None = None
    n_cache_reuse: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)


def _coerce(kind: Any, value: Any) -> Any:
    if kind is float:
        return float(value)
    if kind is int:
        return int(value)
    if kind is bool:
        return bool(value)
    return tuple(value)


def renamed(body: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """A family's fields under llama.cpp's names (``{"temp": "temperature", ...}``)."""
    return {names[k]: v for k, v in body.items() if k in names}


def sampling_from(body: Mapping[str, Any], defaults: Defaults) -> SamplingParams:
    """The sampling fields present in ``body`` (under llama.cpp's names) over the defaults."""
    changes = {name: _coerce(kind, body[name]) for name, kind in SAMPLING_FIELDS.items()
               if body.get(name) is not None}
    if any("\0" in b for b in changes.get("dry_sequence_breakers", ())):
        raise InvalidRequest("invalid value for 'dry_sequence_breakers': a breaker may not hold "
                             "a NUL character", param="dry_sequence_breakers")
    changes.setdefault("seed", defaults.seed)
    if any(name.startswith("dry_") for name in changes):
        changes["dry_given"] = True
    return replace(defaults.sampling, **changes)


def sampling_report(params: SamplingParams) -> dict[str, Any]:
    """The sampling fields as llama.cpp reports them (``generation_settings``, ``/props``)."""
    out: dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        value = getattr(params, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def prompt_parts(raw: str | list[str | int] | dict[str, Any]) -> tuple[str | int, ...]:
    if isinstance(raw, dict):
        return (_prompt_object(raw),)
    return (raw,) if isinstance(raw, str) else tuple(raw)


def prompt_list(raw: Any) -> list[tuple[str | int, ...]]:
    """llama.cpp's prompts: a string, or an array holding a token id, is one prompt (strings and
    ids mixed); any other array is one prompt per element (each a string or such an array)."""
    if isinstance(raw, dict):
        raw = _prompt_object(raw)
    if isinstance(raw, str) or any(isinstance(p, int) for p in raw):
        return [prompt_parts(raw)]
    return [prompt_parts(_prompt_object(p) if isinstance(p, dict) else p) for p in raw]


def _prompt_object(obj: Mapping[str, Any]) -> str:
    """llama.cpp's ``{"prompt_string": ..., "multimodal_data"?: [...]}``."""
    if obj.get("multimodal_data"):
        raise InvalidRequest("Multimodal data provided, but model does not support multimodal "
                             "requests ('prompt')", param="prompt")
    return str(obj["prompt_string"])


def choices_wanted(body: Mapping[str, Any], n_prompts: int, n_slots: int, *,
                   field: str = "n_cmpl") -> int:
    """``n_cmpl`` (or OpenAI's ``n``): how many replies per prompt, checked as llama.cpp does
    (at most one per slot).

    Raises:
        InvalidRequest: naming the field.
    """
    n = int(body.get(field) or body.get("n") or 1)
    if n > n_slots:
        raise InvalidRequest(f"invalid value for '{field}': at most {n_slots} (one per slot)",
                             param=field)
    return n


def stops_from(raw: str | list[str] | None, *, field: str = "stop") -> tuple[str, ...]:
    stops = () if raw is None else (raw,) if isinstance(raw, str) else tuple(raw)
    if "" in stops:
        raise InvalidRequest(f"invalid value for '{field}': empty stop string", param=field)
    return stops


def logit_bias_from(raw: Any) -> tuple[tuple[int | str, float], ...]:
    """``{"15043": 1.0, "Hello": -1}`` or ``[[15043, 1.0], ["Hello", false]]``; false bans."""
    if not raw:
        return ()
    pairs: list[tuple[Any, Any]] = list(raw.items()) if isinstance(raw, dict) else list(raw)
    out: list[tuple[int | str, float]] = []
    for key, value in pairs:
        bias = -math.inf if value is False else float(value)
        if isinstance(raw, dict) and isinstance(key, str) and _TOKEN_ID.fullmatch(key):
            key = int(key)
        out.append((key, bias))
    return tuple(out)


def constraint_from(body: Mapping[str, Any]) -> Constraint | None:
    """llama.cpp's ``grammar`` or ``json_schema`` (not both)."""
    if body.get("grammar") is not None and body.get("json_schema") is not None:
        raise InvalidRequest("'grammar' and 'json_schema' cannot be used together", param="grammar")
    if body.get("grammar") is not None:
        return GrammarConstraint(body["grammar"])
    if body.get("json_schema") is not None:
        return SchemaConstraint(body["json_schema"])
    return None


def native_options(body: Mapping[str, Any], defaults: Defaults) -> dict[str, Any]:
    """llama.cpp's per-request options that are not sampling fields."""
    out: dict[str, Any] = {}
    if body.get("lora") is not None:
        out["lora"] = tuple((int(e["id"]), float(e["scale"])) for e in body["lora"])
    for name, default in (("cache_prompt", defaults.cache_prompt), ("id_slot", -1),
                          ("n_keep", defaults.n_keep), ("n_discard", 0), ("n_indent", 0),
                          ("t_max_predict_ms", 0), ("return_progress", False),
                          ("return_tokens", False), ("timings_per_token", False),
                          ("n_cache_reuse", defaults.n_cache_reuse)):
        value = body.get(name)
        out[name] = type(default)(value) if value is not None else default
    out["schema_mode"] = schema_mode_from(body)
    return out


def schema_mode_from(body: Mapping[str, Any]) -> SchemaMode | None:
    """The request's own ``schema_mode`` (its schema allows only the two names), or None."""
    mode = body.get("schema_mode")
    return mode if mode in SCHEMA_MODES else None


def build(defaults: Defaults, *, prompt: tuple[str | int, ...], sampling: SamplingParams,
          n_predict: int | None = None, stops: tuple[str, ...] = (),
          constraint: Constraint | None = None, **options: Any) -> CompletionRequest:
    """The one way a family makes a request: what its wire said, and the server's defaults
    for all it did not (``-n``, ``--keep``, ``--no-cache-prompt``, ``--cache-reuse``, and
    ``--grammar``/``-j`` when the request has no constraint of its own). ``sampling`` came
    from :func:`sampling_from`, which applies the sampling flags; ``options`` are other
    :class:`CompletionRequest` fields the wire has (the native family's ``n_keep``...)."""
    return CompletionRequest(
        prompt=prompt, sampling=sampling,
        n_predict=defaults.n_predict if n_predict is None else n_predict,
        stops=stops, constraint=constraint or defaults.constraint,
        **{"n_keep": defaults.n_keep, "cache_prompt": defaults.cache_prompt,
           "n_cache_reuse": defaults.n_cache_reuse, **options})


def native_request(body: Mapping[str, Any], defaults: Defaults, *,
                   prompt: tuple[str | int, ...] | None = None) -> CompletionRequest:
    """A body checked by ``schemas/completion.json`` (llama.cpp's ``/completion``)."""
    n_predict = body.get("n_predict", body.get("max_tokens"))
    return build(
        defaults, prompt=prompt if prompt is not None else prompt_parts(body["prompt"]),
        sampling=sampling_from(body, defaults),
        logit_bias=logit_bias_from(body.get("logit_bias")),
        n_predict=int(n_predict) if n_predict is not None else None,
        stops=stops_from(body.get("stop")), constraint=constraint_from(body),
        **native_options(body, defaults))


def server_constraint(settings: Settings) -> Constraint | None:
    """The server's default constraint: ``--grammar``/``--grammar-file`` or ``--json-schema``
    (checked at start-up by :func:`app.cli.load_settings`)."""
    if settings.grammar is not None:
        return GrammarConstraint(settings.grammar, field="--grammar")
    if settings.json_schema is not None:
        return SchemaConstraint(json.loads(settings.json_schema), field="--json-schema")
    return None
