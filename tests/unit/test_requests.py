"""The one request builder: every family's parser gives the server's defaults to what its
wire did not say (sampling flags, seed, ``--keep``, ``--no-cache-prompt``,
``--cache-reuse``, ``--grammar``/``-j``), and a request's own values win. No model, no
socket: each family's parser runs on a plain context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from app.api import anthropic, responses
from app.api.chatbody import messages, openai_request, tools_from
from app.api.compat import _request
from app.api.goinfer import infer_request
from app.api.kobold import generate_request
from app.api.ollama import chat_turn, chat_wire
from app.api.ollama import generate_request as ollama_generate
from app.chat import select
from app.completion import CompletionRequest, GrammarConstraint, SamplingParams, SchemaConstraint
from app.requests import Defaults, build, native_request, sampling_from
from app.settings import Settings
from app.turns import chat_request

DEFAULTS = Defaults(n_predict=50, seed=5, n_keep=7, cache_prompt=False, n_cache_reuse=32,
                    constraint=GrammarConstraint('root ::= "x"', field="--grammar"),
                    sampling=SamplingParams(temperature=0.3, top_k=3, seed=5))

CHAT = select(file=None, name="chatml", gguf_template=None, architecture="fake",
              bos_token="", eos_token="")


def _bound() -> Any:
    settings = Settings()
    return SimpleNamespace(settings=settings, defaults=DEFAULTS, chat=CHAT,
                           service=SimpleNamespace(settings=settings),
                           template_variables=lambda *a, **k: {})


def _openai_chat(body: dict[str, Any]) -> CompletionRequest:
    base = openai_request(body, DEFAULTS, prompt="", n_probs=0, extra_stops=CHAT.stops)
    return chat_request(CHAT, messages(body), tools_from(body), base, system_prompt=None,
                        reasoning=False).request


USER = [{"role": "user", "content": "hi"}]
#: family -> (its parser, a minimal body of its wire)
FAMILIES: dict[str, tuple[Callable[[dict[str, Any]], CompletionRequest], dict[str, Any]]] = {
    "native /completion": (lambda b: native_request(b, DEFAULTS), {"prompt": "hi"}),
    "openai /v1/completions": (
        lambda b: openai_request(b, DEFAULTS, prompt="hi", n_probs=0), {"prompt": "hi"}),
    "openai /v1/chat/completions": (_openai_chat, {"messages": USER}),
    "anthropic /v1/messages": (lambda b: anthropic.turn_of(_bound(), b).request,
                               {"max_tokens": 9, "messages": USER}),
    "responses /v1/responses": (lambda b: responses.turn_of(_bound(), b).request,
                                {"input": "hi"}),
    "goinfer /infer": (lambda b: infer_request(b, _bound()), {"prompt": "hi"}),
    "kobold /api/v1/generate": (lambda b: generate_request(b, DEFAULTS)[0], {"prompt": "hi"}),
    "ollama /api/generate": (lambda b: ollama_generate(b, DEFAULTS, prompt=("hi",)),
                             {"model": "m", "prompt": "hi"}),
    "ollama /api/chat": (lambda b: chat_turn(b, chat_wire(b), DEFAULTS, CHAT, system_prompt=None,
                                             reasoning=False).request,
                         {"model": "m", "messages": USER}),
    "seed servers (llama-go, llm, llm-api)": (lambda b: _request(b, DEFAULTS), {"prompt": "hi"}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_takes_every_server_default(family: str) -> None:
    parse, body = FAMILIES[family]
    request = parse(body)
    assert (request.n_keep, request.cache_prompt, request.n_cache_reuse) == (7, False, 32)
    assert request.constraint == DEFAULTS.constraint
    assert (request.sampling.temperature, request.sampling.top_k, request.sampling.seed) == \
        (0.3, 3, 5)


@pytest.mark.parametrize("family", ["native /completion", "openai /v1/chat/completions",
                                    "goinfer /infer", "kobold /api/v1/generate",
                                    "seed servers (llama-go, llm, llm-api)"])
def test_a_requests_own_sampling_wins(family: str) -> None:
    parse, body = FAMILIES[family]
    temperature = "temp" if "goinfer" in family else "temperature"  # goinfer's own name
    request = parse({**body, temperature: 1.5})
    assert request.sampling.temperature == 1.5
    assert request.sampling.top_k == 3  # the rest stay the server's


def test_the_builder_keeps_a_requests_own_constraint_and_options() -> None:
    own = SchemaConstraint({"type": "integer"})
    got = build(DEFAULTS, prompt=("x",), sampling=DEFAULTS.sampling, constraint=own,
                n_keep=-1, cache_prompt=True)
    assert got.constraint is own
    assert (got.n_keep, got.cache_prompt, got.n_cache_reuse, got.n_predict) == (-1, True, 32, 50)


def test_the_native_family_reads_its_own_cache_fields_over_the_flags() -> None:
    got = native_request({"prompt": "x", "n_keep": 3, "cache_prompt": True, "n_cache_reuse": 0,
                          "n_predict": 4}, DEFAULTS)
    assert (got.n_keep, got.cache_prompt, got.n_cache_reuse, got.n_predict) == (3, True, 0, 4)


def test_any_dry_field_marks_dry_as_the_callers() -> None:
    assert not sampling_from({"temperature": 0}, Defaults()).dry_given
    assert sampling_from({"dry_base": 2}, Defaults()).dry_given
    assert sampling_from({"dry_multiplier": 0}, Defaults()).dry_given


def test_ollama_options_are_llama_cpp_fields_and_format_is_the_constraint() -> None:
    body = {"model": "m", "prompt": "hi", "format": "json",
            "options": {"temperature": 1.2, "num_predict": -2, "stop": ["\n"], "seed": 3}}
    got = ollama_generate(body, DEFAULTS, prompt=("hi",), stops=("<end>",))
    assert (got.sampling.temperature, got.sampling.seed, got.n_predict) == (1.2, 3, -1)
    assert got.stops == ("<end>", "\n")
    assert got.constraint == SchemaConstraint({"type": "object"}, field="format")
    turn = chat_turn({**body, "messages": USER}, chat_wire({**body, "messages": USER}),
                     DEFAULTS, CHAT, system_prompt=None, reasoning=False)
    assert turn.request.sampling.temperature == 1.2
    assert turn.request.constraint == SchemaConstraint({"type": "object"}, field="format")


def test_server_n_predict_is_the_default_where_the_wire_has_no_limit() -> None:
    assert native_request({"prompt": "x"}, DEFAULTS).n_predict == 50
    assert _request({"prompt": "x"}, replace(DEFAULTS, n_predict=12)).n_predict == 12
