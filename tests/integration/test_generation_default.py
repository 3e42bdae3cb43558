"""The generation shape reaches every route and family: the same plain schema (no
``additionalProperties``, no strict flag) gives an object with only its declared members, in
declared order, finished by the grammar, whatever the client speaks.

Where a family takes ``logit_bias``, the reply is pushed towards ',' after each member: an open
grammar then starts an undeclared member (the old default did; ``schema_mode: "spec"`` still
does, which shows the push works), a closed one can only close the object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, running_server

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "maximum": 120},
    "city": {"type": "string", "maxLength": 24}}, "required": ["name", "age"]}
TEXT = "Jane Doe, 42, lives in Lyon."
DECLARED = list(SCHEMA["properties"])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "2") as srv:
        yield srv


@pytest.fixture(scope="module")
def comma(server: ServerProcess) -> int:
    tokens = httpx.post(server.base_url + "/tokenize", json={"content": ","},
                        timeout=TIMEOUT).json()["tokens"]
    assert len(tokens) == 1
    return int(tokens[0])


def assert_declared(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict), text
    keys = list(value)
    assert set(keys) <= set(DECLARED), text
    assert keys == [k for k in DECLARED if k in keys], text  # declared order
    assert {"name", "age"} <= set(keys), text
    return value


def post(server: ServerProcess, path: str, body: dict[str, Any], **kwargs: Any) -> Any:
    r = httpx.post(server.base_url + path, json=body, timeout=TIMEOUT, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def test_native_completion(server: ServerProcess, comma: int) -> None:
    body = {"prompt": f"{TEXT}\nAs JSON:\n", "json_schema": SCHEMA, "n_predict": 80,
            "temperature": 0, "logit_bias": [[comma, 30]]}
    out = post(server, "/completion", body)
    assert_declared(out["content"])
    assert out["stop_type"] == "eos"
    assert out["schema_valid"] is True
    # the same push with the spec-faithful shape: an undeclared member (the first member is
    # free there, and so is its name) and no object with only the declared members
    spec = post(server, "/completion", {**body, "schema_mode": "spec"})
    with pytest.raises((AssertionError, ValueError)):
        assert_declared(spec["content"])


def test_openai_chat_response_format_and_text_completions(server: ServerProcess,
                                                          comma: int) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    out = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": TEXT}], "response_format": fmt,
        "max_tokens": 80, "temperature": 0, "logit_bias": {str(comma): 30}})
    assert out["choices"][0]["finish_reason"] == "stop"
    assert_declared(out["choices"][0]["message"]["content"])
    out = post(server, "/v1/completions", {
        "prompt": f"{TEXT}\nAs JSON:\n", "json_schema": SCHEMA, "max_tokens": 80,
        "temperature": 0, "logit_bias": {str(comma): 30}})
    assert out["choices"][0]["finish_reason"] == "stop"
    assert_declared(out["choices"][0]["text"])


def test_tool_arguments_of_every_family(server: ServerProcess, comma: int) -> None:
    out = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": TEXT}], "max_tokens": 120, "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "save", "parameters": SCHEMA}}],
        "tool_choice": "required", "logit_bias": {str(comma): 30}})
    call = out["choices"][0]["message"]["tool_calls"][0]["function"]
    assert_declared(call["arguments"])
    out = post(server, "/v1/messages", {
        "model": "m", "max_tokens": 120, "messages": [{"role": "user", "content": TEXT}],
        "tools": [{"name": "save", "input_schema": SCHEMA}], "tool_choice": {"type": "any"}},
        headers={"anthropic-version": "2023-06-01"})
    use = [b for b in out["content"] if b["type"] == "tool_use"]
    assert_declared(json.dumps(use[0]["input"]))
    out = post(server, "/v1/responses", {
        "input": TEXT, "max_output_tokens": 120, "tool_choice": "required",
        "tools": [{"type": "function", "name": "save", "parameters": SCHEMA, "strict": False}]})
    calls = [o for o in out["output"] if o["type"] == "function_call"]
    assert_declared(calls[0]["arguments"])


def test_anthropic_output_config_responses_text_format_and_ollama(server: ServerProcess) -> None:
    out = post(server, "/v1/messages", {
        "model": "m", "max_tokens": 120, "messages": [{"role": "user", "content": TEXT}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        headers={"anthropic-version": "2023-06-01"})
    assert out["stop_reason"] == "end_turn"
    assert_declared(out["content"][0]["text"])
    out = post(server, "/v1/responses", {
        "input": TEXT, "max_output_tokens": 120, "text": {"format": {
            "type": "json_schema", "name": "person", "schema": SCHEMA, "strict": False}}})
    assert out["status"] == "completed"
    assert_declared(out["output"][-1]["content"][0]["text"])
    out = post(server, "/api/generate", {"model": "m", "prompt": TEXT, "format": SCHEMA,
                                         "stream": False, "options": {"temperature": 0,
                                                                      "num_predict": 120}})
    assert out["done_reason"] == "stop"
    assert_declared(out["response"])
    out = post(server, "/api/chat", {"model": "m", "messages": [{"role": "user", "content": TEXT}],
                                     "format": SCHEMA, "stream": False,
                                     "options": {"temperature": 0, "num_predict": 120}})
    assert out["done_reason"] == "stop"
    assert_declared(out["message"]["content"])


def test_grammar_route_gives_both_shapes(server: ServerProcess) -> None:
    from grammar import accepts

    closed = post(server, "/grammar", {"schema": SCHEMA})
    assert "/additionalProperties (absent: closed, the generation default)" in closed["enforced"]
    assert not accepts(closed["gbnf"], '{"name": "a", "age": 1, "zip": 2}')
    assert not accepts(closed["gbnf"], '{"age": 1, "name": "a"}')
    spec = post(server, "/grammar", {"schema": SCHEMA, "schema_mode": "spec"})
    assert "/additionalProperties (absent: open)" in spec["enforced"]
    assert accepts(spec["gbnf"], '{"age": 1, "zip": 2, "name": "a"}')


def test_server_json_schema_and_schema_mode_flags() -> None:
    with running_server("--parallel", "1", "-j", json.dumps(SCHEMA)) as srv:
        comma = httpx.post(srv.base_url + "/tokenize", json={"content": ","},
                           timeout=TIMEOUT).json()["tokens"][0]
        out = post(srv, "/completion", {"prompt": f"{TEXT}\nAs JSON:\n", "n_predict": 80,
                                        "temperature": 0, "logit_bias": [[comma, 30]]})
        assert_declared(out["content"])
    with running_server("--parallel", "1", "--schema-mode", "spec") as srv:
        spec = post(srv, "/grammar", {"schema": SCHEMA})
        assert "/additionalProperties (absent: open)" in spec["enforced"]
        closed = post(srv, "/grammar", {"schema": SCHEMA, "schema_mode": "generation"})
        assert "/additionalProperties (absent: closed, the generation default)" \
            in closed["enforced"]


# --- the loop guard: DRY for schema requests that do not set it ----------------------------------
EVENT_TEXT = "Team meeting on 2025-03-14 at 09:30 in Room 4."
EVENT = {"type": "object", "properties": {
    "title": {"type": "string"},
    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
    "start_time": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}$"},
    "location": {"type": "string"}}, "required": ["title", "date", "start_time"]}
EVENT_PROMPT = f"Text: {EVENT_TEXT}\nThe facts of the text as JSON:\n"  # bench/extraction.py's


#: a loop: the same 1-20 characters six times in a row ("0000…", "1st floor, 1st floor, …")
VERBATIM_LOOP = re.compile(r"(.{1,20}?)\1{5,}", re.DOTALL)


def test_the_loop_guard_breaks_a_verbatim_loop(server: ServerProcess) -> None:
    """Greedy, the embedded model loops inside "location" to the token limit; which loop
    depends on the CPU's arithmetic ("1st floor, 1st floor, …" on one machine, "1000000…" on
    another). Under the default guard it does not repeat itself: on the first machine it
    closed the object, on the second it counts floors instead ("1st floor, 2nd floor, …",
    which DRY cannot see: README, extraction benchmark). A request that sets DRY itself (here:
    off) gets what it asked for."""
    base = {"prompt": EVENT_PROMPT, "json_schema": EVENT, "n_predict": 200, "temperature": 0,
            "cache_prompt": False}  # a cached prompt's logits differ a little from a fresh one's
    guarded = post(server, "/completion", base)
    assert guarded["generation_settings"]["dry_multiplier"] == 0.8
    assert not VERBATIM_LOOP.search(guarded["content"]), guarded["content"]
    if guarded["stop_type"] == "eos":
        assert guarded["schema_valid"] is True
    off = post(server, "/completion", {**base, "dry_multiplier": 0})
    assert off["stop_type"] == "limit"
    assert VERBATIM_LOOP.search(off["content"]), off["content"]
    assert off["generation_settings"]["dry_multiplier"] == 0.0
    # a grammar written by hand is the caller's own: no guard
    plain = post(server, "/completion", {"prompt": "x", "n_predict": 1, "grammar": 'root ::= "a"'})
    assert plain["generation_settings"]["dry_multiplier"] == 0.0


def test_the_loop_guard_on_another_family(server: ServerProcess) -> None:
    base = {"prompt": EVENT_PROMPT, "json_schema": EVENT, "max_tokens": 200, "temperature": 0,
            "cache_prompt": False}
    guarded = post(server, "/v1/completions", base)["choices"][0]
    assert not VERBATIM_LOOP.search(guarded["text"]), guarded["text"]
    off = post(server, "/v1/completions", {**base, "dry_multiplier": 0})["choices"][0]
    assert off["finish_reason"] == "length"
    assert VERBATIM_LOOP.search(off["text"]), off["text"]


def test_the_loop_guard_flag_turns_it_off() -> None:
    with running_server("--schema-dry", "0") as srv:
        out = post(srv, "/completion", {"prompt": EVENT_PROMPT, "json_schema": EVENT,
                                        "n_predict": 200, "temperature": 0})
    assert out["stop_type"] == "limit"
    assert out["generation_settings"]["dry_multiplier"] == 0.0
