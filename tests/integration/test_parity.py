"""What llama.cpp's own server suite checks and clients rely on, in this project's suite: one
model listed under ``--model``, ``--alias`` names, Anthropic replies without ``timings``,
thinking history rendered by a template that shows it, the token-counting routes agreeing with
what a request is charged, and response header names in their usual case."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, running_server

QWEN3 = Path(__file__).resolve().parents[1] / "data" / "templates" / "Qwen-Qwen3-0.6B.jinja"
TOOL = {"type": "function", "function": {
    "name": "list_files", "description": "List files",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}
THOUGHT = "I should look at the project layout before anything else."


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--model", "gemma3-270m", "--parallel", "1", "--chat-template-file",
                        str(QWEN3), "--alias", "tiny-base,code", "--cors-origins",
                        "localhost") as srv:
        yield srv


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> Any:
    resp = httpx.post(server.base_url + path, json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_one_model_is_listed_under_its_sorted_first_alias(server: ServerProcess) -> None:
    data = httpx.get(server.base_url + "/v1/models", timeout=TIMEOUT).json()["data"]
    [model] = data  # the embedded chat model routes by name, but --model chose this one
    assert model["id"] == "code"  # llama.cpp: the alphabetically first of --alias
    assert set(model["aliases"]) == {"code", "tiny-base"}
    assert post(server, "/completion", {"prompt": "Hi", "n_predict": 1,
                                        "model": "tiny-base"})["model"] == "code"


def test_anthropic_reply_has_usage_and_no_timings(server: ServerProcess) -> None:
    with anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        r = c.messages.with_raw_response.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "Say hello"}],
            extra_body={"temperature": 0})
    body = json.loads(r.http_response.text)
    assert "timings" not in body
    assert body["usage"]["output_tokens"] > 0
    assert isinstance(body["usage"]["cache_read_input_tokens"], int)
    assert body["type"] == "message"
    # llama.cpp's OpenAI shape keeps them
    chat = post(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4})
    assert chat["timings"]["predicted_n"] == chat["usage"]["completion_tokens"]


def test_anthropic_empty_messages_go_to_the_template(server: ServerProcess) -> None:
    """Qwen3's template reads ``messages[0]``: it refuses an empty list, as Hugging Face's
    renderer does (SmolLM2's renders it: ``test_agents``)."""
    resp = httpx.post(server.base_url + "/v1/messages", json={
        "model": "m", "max_tokens": 4, "messages": []}, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "chat template" in resp.json()["error"]["message"]


def _history(thinking: bool) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "tool_use", "id": "call_1", "name": "list_files", "input": {"path": "."}}]
    if thinking:
        blocks.insert(0, {"type": "thinking", "thinking": THOUGHT, "signature": ""})
    return [{"role": "user", "content": "Fix the bug"},
            {"role": "assistant", "content": blocks},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "main.py"}]}]


def test_thinking_history_reaches_a_template_that_shows_it(server: ServerProcess) -> None:
    tool = {"name": "list_files", "description": "List files",
            "input_schema": TOOL["function"]["parameters"]}  # type: ignore[index]
    counts = [post(server, "/v1/messages/count_tokens", {
        "model": "m", "messages": _history(thinking), "tools": [tool]})["input_tokens"]
        for thinking in (False, True)]
    n_thought = len(post(server, "/tokenize", {"content": THOUGHT})["tokens"])
    assert counts[1] >= counts[0] + n_thought  # the thought and its <think> tags
    # OpenAI's reasoning_content, Ollama's thinking and a Responses reasoning item alike
    openai_prompt = post(server, "/apply-template", {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Fix the bug"},
        {"role": "assistant", "content": "", "reasoning_content": THOUGHT, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "list_files", "arguments": "{\"path\": \".\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "main.py"}]})["prompt"]
    assert f"<think>\n{THOUGHT}\n</think>" in openai_prompt
    answer = post(server, "/api/chat", {"model": "m", "stream": False, "options": {
        "num_predict": 1}, "messages": [{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hello",
                                         "thinking": THOUGHT},
                                        {"role": "user", "content": "Again"}]})
    assert answer["done"] is True
    with_item = post(server, "/v1/responses/input_tokens", {"input": [
        {"role": "user", "content": "Fix the bug"},
        {"type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": THOUGHT}]},
        {"type": "function_call", "call_id": "call_1", "name": "list_files",
         "arguments": "{\"path\": \".\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "main.py"}],
        "tools": [{"type": "function", **TOOL["function"]}]})  # type: ignore[dict-item]
    without = post(server, "/v1/responses/input_tokens", {"input": [
        {"role": "user", "content": "Fix the bug"},
        {"type": "function_call", "call_id": "call_1", "name": "list_files",
         "arguments": "{\"path\": \".\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "main.py"}],
        "tools": [{"type": "function", **TOOL["function"]}]})  # type: ignore[dict-item]
    assert with_item["object"] == "response.input_tokens"
    assert with_item["input_tokens"] >= without["input_tokens"] + n_thought


def test_counted_input_tokens_are_what_the_request_is_charged(server: ServerProcess) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as c:
        charged = c.chat.completions.create(model="m", messages=messages,  # type: ignore[arg-type]
                                            max_tokens=2, tools=[TOOL])  # type: ignore[list-item]
        counted = post(server, "/v1/chat/completions/input_tokens",
                       {"messages": messages, "tools": [TOOL]})
        assert counted == {"object": "response.input_tokens",
                           "input_tokens": charged.usage.prompt_tokens}  # type: ignore[union-attr]
        reply = c.responses.create(model="m", input="What is the capital of France?",
                                   instructions="Be brief.", max_output_tokens=2)
        counted = post(server, "/v1/responses/input_tokens",
                       {"input": "What is the capital of France?", "instructions": "Be brief."})
        assert counted["input_tokens"] == reply.usage.input_tokens  # type: ignore[union-attr]


def test_response_header_names_keep_their_usual_case(server: ServerProcess) -> None:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("OPTIONS", "/completion", headers={
            "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"})
        resp = conn.getresponse()
        resp.read()
        names = [name for name, _ in resp.getheaders()]
    finally:
        conn.close()
    assert resp.status == 200
    # a plain dict of the headers, as llama.cpp's suite and many scripts keep them
    assert "Access-Control-Allow-Origin" in names
    assert "Content-Type" in names
    assert not any(n.startswith("access-control") for n in names)


def test_templates_are_told_whether_to_think(server: ServerProcess) -> None:
    """llama.cpp gives every template ``enable_thinking`` (true unless ``--reasoning off``):
    Qwen3's opens its answer with an empty thought only when told not to think."""
    ask = {"messages": [{"role": "user", "content": "What is today?"}]}
    assert post(server, "/apply-template", ask)["prompt"].endswith("<|im_start|>assistant\n")
    off = post(server, "/apply-template", {**ask, "chat_template_kwargs": {
        "enable_thinking": False}})["prompt"]
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    with running_server("--model", "gemma3-270m", "--parallel", "1", "--chat-template-file",
                        str(QWEN3), "--reasoning", "off") as quiet:
        assert post(quiet, "/apply-template", ask)["prompt"] == off
        anthropic_off = post(quiet, "/v1/messages/count_tokens", {"model": "m", **ask})
        assert anthropic_off["input_tokens"] == len(post(quiet, "/tokenize", {
            "content": off, "add_special": True, "parse_special": True})["tokens"])


def test_verbose_and_streamed_usage_timings(server: ServerProcess) -> None:
    body = {"max_tokens": 3, "messages": [{"role": "system", "content": "Book"},
                                          {"role": "user", "content": "What is the best book"}]}
    plain = post(server, "/v1/chat/completions", body)
    assert "__verbose" not in plain
    debug = post(server, "/v1/chat/completions", {**body, "verbose": True})["__verbose"]
    assert debug["prompt"].endswith("What is the best book<|im_end|>\n<|im_start|>assistant\n")
    assert debug["tokens_predicted"] <= 3
    events = []
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", timeout=TIMEOUT, json={
            **body, "stream": True, "stream_options": {"include_usage": True},
            "timings_per_token": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert "timings" not in events[0]
    [usage] = [e for e in events if not e["choices"]]
    assert usage["timings"]["predicted_n"] == usage["usage"]["completion_tokens"]
    assert usage["timings"]["prompt_n"] + usage["timings"]["cache_n"] == \
        usage["usage"]["prompt_tokens"]


def test_responses_stream_carries_llama_cpps_telemetry(server: ServerProcess) -> None:
    events = []
    with httpx.stream("POST", server.base_url + "/responses", timeout=TIMEOUT, json={
            "input": "This is a test " * 10, "max_output_tokens": 8, "stream": True,
            "timings_per_token": True, "return_progress": True}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    progress = [e for e in events if "prompt_progress" in e]
    assert progress
    assert all(e["type"] == "response.in_progress" for e in progress)
    assert progress[-1]["prompt_progress"]["processed"] == progress[-1]["prompt_progress"]["total"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert deltas
    assert all("predicted_per_second" in e["timings"] for e in deltas)
    [last] = [e for e in events if e["type"] in ("response.completed", "response.incomplete")]
    assert last["timings"]["predicted_n"] == last["response"]["usage"]["output_tokens"]
    # the sequence numbers still count every event
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_kv_unified_lets_one_slot_use_the_whole_pool() -> None:
    """``-c 256 -np 4 --kv-unified``: requests of 80 tokens fit (the pool is shared and a
    finished slot's cells are reused); four of 70 together cannot, and each fails in
    llama.cpp's words instead of being cut at 64 tokens."""
    from concurrent.futures import ThreadPoolExecutor

    with running_server("-c", "256", "-np", "4", "--kv-unified") as srv:
        assert httpx.get(srv.base_url + "/props", timeout=TIMEOUT).json()[
            "default_generation_settings"]["n_ctx"] == 256

        def ask(n: int) -> httpx.Response:
            return httpx.post(srv.base_url + "/completion", timeout=TIMEOUT, json={
                "prompt": "A", "n_predict": n, "ignore_eos": True, "temperature": 0})

        with ThreadPoolExecutor(4) as pool:
            fits = list(pool.map(ask, [80, 40, 80, 80]))
            assert [r.json()["tokens_predicted"] for r in fits] == [80, 40, 80, 80]
            too_much = list(pool.map(ask, [70, 70, 70, 70]))
        failed = [r for r in too_much if r.status_code != 200]
        assert failed, [r.json()["tokens_predicted"] for r in too_much]
        for r in failed:
            assert r.status_code == 500
            assert "context size has been exceeded" in r.json()["error"]["message"]
        # the server is still up, and the pool is free again
        assert ask(200).json()["tokens_predicted"] == 200


def test_a_null_model_means_the_default_one(server: ServerProcess) -> None:
    """llama.cpp's suite (and scripts that build bodies from optional settings) send
    ``"model": null``: it asks for the default model, as an absent one does."""
    for path, body in (("/completion", {"prompt": "Hi", "n_predict": 1}),
                       ("/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
                       ("/v1/chat/completions", {"max_tokens": 1, "messages": [
                           {"role": "user", "content": "Hi"}]}),
                       ("/tokenize", {"content": "Hi"})):
        post(server, path, {**body, "model": None})
    resp = httpx.post(server.base_url + "/completion", timeout=TIMEOUT,
                      json={"prompt": "Hi", "n_predict": 1, "model": 5})
    assert resp.status_code == 400  # null, not any type
