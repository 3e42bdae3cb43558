"""Agent APIs against a real server with the embedded chat model (SmolLM2-135M-Instruct):
OpenAI tool calling, Anthropic Messages, OpenAI Responses, driven by the real ``openai`` and
``anthropic`` packages; cancelled streams of each kind free their slot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.integration.helpers import TIMEOUT, wait_until
from tests.serverproc import ServerProcess, running_server

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 40},
    "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"],
    "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": ADD}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--model", "smollm2-135m-instruct", "--parallel", "2") as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(server: ServerProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def check_call(name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    """The call names a declared tool and its arguments validate against its schema."""
    assert name in SCHEMAS
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(args, SCHEMAS[name])
    return args


# --- OpenAI chat: tool calls --------------------------------------------------------------------
def test_required_tool_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                       tool_choice="required", temperature=0, max_tokens=200,
                                       parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    check_call(call.function.name, call.function.arguments)


def test_named_tool_is_the_one_called(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, temperature=0, max_tokens=200,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "add"}})
    calls = r.choices[0].message.tool_calls or []
    assert calls
    assert all(c.function.name == "add" for c in calls)
    for c in calls:
        check_call(c.function.name, c.function.arguments)


def test_auto_answers_in_text_or_calls_and_never_leaks_the_format(client: openai.OpenAI) -> None:
    for question in ("What is the weather in Paris?", "Write one sentence about the sea."):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": question}], tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="auto", temperature=0, max_tokens=120)
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason in ("tool_calls", "length")
            if choice.finish_reason == "tool_calls":
                for c in choice.message.tool_calls:
                    check_call(c.function.name, c.function.arguments)
        else:
            assert choice.message.content
        assert "<tool_call>" not in (choice.message.content or "")


def test_streamed_tool_calls_match_the_unstreamed_ones(client: openai.OpenAI) -> None:
    body: dict[str, Any] = {"model": "m", "messages": ASK, "tools": TOOLS,
                            "tool_choice": "required", "temperature": 0, "max_tokens": 300}
    whole = client.chat.completions.create(**body)
    expected = [(c.function.name, c.function.arguments)
                for c in whole.choices[0].message.tool_calls or []]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(**body, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or ():
            if tc.index not in calls:  # the first delta of a call carries id and name
                assert tc.id
                assert tc.function
                assert tc.function.name
                calls[tc.index] = {"name": tc.function.name, "arguments": ""}
            else:
                assert tc.id is None
            calls[tc.index]["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == expected
    assert finish == whole.choices[0].finish_reason
    if finish == "tool_calls":
        for c in calls.values():
            check_call(c["name"], c["arguments"])


def test_a_tool_result_turn(client: openai.OpenAI) -> None:
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    r = client.chat.completions.create(model="m", messages=history, tools=TOOLS,  # type: ignore[arg-type]
                                       tool_choice="none", temperature=0, max_tokens=40)
    assert r.choices[0].message.content
    assert not r.choices[0].message.tool_calls
    assert r.usage is not None
    assert r.usage.prompt_tokens > 100


def test_apply_template_shows_tools_calls_and_results(server: ServerProcess) -> None:
    history = [*ASK,
               {"role": "assistant", "content": None, "tool_calls": [{
                   "id": "call_1", "type": "function",
                   "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    resp = httpx.post(server.base_url + "/apply-template", json={"messages": history, "tools": TOOLS},
                      timeout=TIMEOUT)
    prompt = resp.json()["prompt"]
    assert prompt.startswith("<|im_start|>system\nYou can call functions.")
    assert '"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(("change", "field"), [
    ({"tools": [{"type": "function", "function": {"name": "broken", "parameters": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "re", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(a)\\1"}}}}}]},
     "tools[0].function.parameters"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                               "function": {"name": "add",
                                                                            "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [*ASK, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
     "messages[1].tool_calls[0]"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "required"}, "tool_choice"),
])
def test_bad_tools_and_history_are_400s(server: ServerProcess, change: dict[str, Any],
                                        field: str) -> None:
    body = {"messages": ASK, "tools": TOOLS, "max_tokens": 8, **change}
    resp = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert field in error["message"] or error.get("param", "").startswith(field), error
    if "parameters" in field:
        assert "/properties/a" in error["message"]
        assert repr(change["tools"][0]["function"]["name"]) in error["message"]


# --- Anthropic Messages ---------------------------------------------------------------------------
CLAUDE_TOOLS: list[Any] = [{"name": t["function"]["name"], "description": t["function"]["description"],
                            "input_schema": t["function"]["parameters"]} for t in TOOLS]


def test_messages_text_reply(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(model="m", max_tokens=30, messages=ASK,  # type: ignore[arg-type]
                               system="Answer briefly.", extra_body={"temperature": 0})
    assert r.type == "message"
    assert r.role == "assistant"
    assert r.id.startswith("msg_")
    assert r.content[0].type == "text"
    assert r.content[0].text
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.usage.output_tokens > 0
    count = claude.messages.count_tokens(model="m", messages=ASK,  # type: ignore[arg-type]
                                         system="Answer briefly.")
    assert count.input_tokens == r.usage.input_tokens


def test_messages_tool_use_streamed_and_not(claude: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "m", "max_tokens": 200, "messages": ASK,
                              "tools": CLAUDE_TOOLS,
                              "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
                              "extra_body": {"temperature": 0}}
    r = claude.messages.create(**kwargs)
    assert r.stop_reason == "tool_use"
    [block] = [b for b in r.content if b.type == "tool_use"]
    assert block.id.startswith("toolu_")
    check_call(block.name, block.input)  # type: ignore[arg-type]
    with claude.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    [sblock] = [b for b in final.content if b.type == "tool_use"]
    assert (sblock.name, sblock.input) == (block.name, block.input)
    assert final.stop_reason == "tool_use"
    # the tool result turn
    r2 = claude.messages.create(model="m", max_tokens=30, tools=CLAUDE_TOOLS, messages=[
        *ASK, {"role": "assistant", "content": r.content},  # type: ignore[list-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                      "content": "21 degrees, clear"}]}],
        tool_choice={"type": "none"}, extra_body={"temperature": 0})
    assert r2.content[0].type == "text"
    assert r2.content[0].text


def test_messages_stream_event_sequence(server: ServerProcess) -> None:
    body = {"model": "m", "max_tokens": 200, "messages": ASK, "stream": True,
            "tools": CLAUDE_TOOLS, "tool_choice": {"type": "tool", "name": "get_weather"}}
    names, data = [], []
    with httpx.stream("POST", server.base_url + "/v1/messages", json=body, timeout=TIMEOUT,
                      headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
            elif line.startswith("data: "):
                data.append(json.loads(line[6:]))
    assert [d["type"] for d in data] == names
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta", "content_block_stop", "content_block_start"}
    start = data[1]["content_block"]
    assert start["type"] == "tool_use"
    assert start["name"] == "get_weather"
    partial = "".join(d["delta"]["partial_json"] for d in data
                      if d["type"] == "content_block_delta" and d["index"] == 0)
    check_call("get_weather", partial)


def test_messages_errors_have_anthropics_shape(claude: anthropic.Anthropic,
                                               server: ServerProcess) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="m", max_tokens=8, messages=ASK, tools=[{  # type: ignore[arg-type]
            "name": "broken", "input_schema": {"type": "object", "properties": {"a": {"type": "x"}}}}])
    body: Any = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "tools[0].input_schema" in body["error"]["message"]
    resp = httpx.post(server.base_url + "/v1/messages", json={"messages": ASK}, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert "max_tokens" in resp.json()["error"]["message"]
    image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64",
                                                                       "media_type": "image/png",
                                                                       "data": "AAAA"}}]}
    resp = httpx.post(server.base_url + "/v1/messages", json={"messages": [image], "max_tokens": 4},
                      timeout=TIMEOUT)
    assert resp.status_code == 400
    assert "messages[0].content[0]" in resp.json()["error"]["message"]


def test_messages_may_be_empty(server: ServerProcess) -> None:
    """As llama-server: the system text and the generation prompt, answered."""
    resp = httpx.post(server.base_url + "/v1/messages", json={
        "model": "m", "max_tokens": 4, "system": "You are terse.", "messages": []},
        timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["type"] == "message"
    assert resp.json()["usage"]["input_tokens"] > 0


def test_messages_stop_sequence(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(model="m", max_tokens=60, messages=ASK,  # type: ignore[arg-type]
                               stop_sequences=[" "], extra_body={"temperature": 0})
    assert r.stop_reason == "stop_sequence"
    assert r.stop_sequence == " "
    assert " " not in r.content[0].text  # type: ignore[union-attr]


# --- OpenAI Responses ---------------------------------------------------------------------------
RESP_TOOLS: list[Any] = [{"type": "function", **t["function"]} for t in TOOLS]


def test_responses_function_call_streamed_and_not(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "m", "input": "What is the weather in Paris?",
                              "tools": RESP_TOOLS, "tool_choice": "required",
                              "parallel_tool_calls": False, "temperature": 0, "store": False,
                              "max_output_tokens": 200}
    r = client.responses.create(**kwargs)
    assert r.status == "completed"
    assert r.object == "response"
    [item] = r.output
    assert item.type == "function_call"
    check_call(item.name, item.arguments)
    kinds, deltas = [], ""
    final = None
    for event in client.responses.create(**kwargs, stream=True):
        kinds.append(event.type)
        if event.type == "response.function_call_arguments.delta":
            deltas += event.delta
        if event.type == "response.completed":
            final = event.response
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.done" in kinds
    assert final is not None
    [sitem] = final.output
    assert sitem.type == "function_call"
    assert sitem.arguments == deltas == item.arguments
    # the result turn, resent as items (stateless)
    r2 = client.responses.create(model="m", store=False, max_output_tokens=30, temperature=0, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": item.call_id, "name": item.name,
         "arguments": item.arguments},
        {"type": "function_call_output", "call_id": item.call_id, "output": "21 degrees"}])
    assert r2.output_text


def test_responses_structured_output(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0,
                                                       "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.responses.create(model="m", input="Invent a person.", store=False, temperature=0,
                                text={"format": {"type": "json_schema", "name": "person",
                                                 "schema": schema}})
    jsonschema.validate(json.loads(r.output_text), schema)


def test_responses_text_stream(client: openai.OpenAI) -> None:
    text = ""
    final = None
    kinds = []
    for event in client.responses.create(model="m", input="Say hello.", store=False,
                                         max_output_tokens=60, temperature=0, stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert final is not None
    assert text
    assert final.output_text == text
    assert final.usage is not None
    assert final.usage.output_tokens > 0
    assert "response.output_text.done" in kinds
    # a reply cut by max_output_tokens is "incomplete", as OpenAI reports it
    assert (final.status == "incomplete") == (kinds[-1] == "response.incomplete")
    if final.status == "incomplete":
        assert final.incomplete_details is not None
        assert final.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(("change", "field"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "nope"}}]},
     "tools[0].parameters"),
])
def test_responses_stateless_and_bad_tools_are_400s(server: ServerProcess, change: dict[str, Any],
                                                    field: str) -> None:
    resp = httpx.post(server.base_url + "/v1/responses", json={"input": "hi", **change},
                      timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]["message"]


# --- cancellation ---------------------------------------------------------------------------------
LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
STORY = {"type": "function", "function": {
    "name": "tell", "description": "Tell a story",
    "parameters": {"type": "object", "properties": {"story": {"type": "string", "minLength": 600}},
                   "required": ["story"], "additionalProperties": False}}}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": LONG, "max_tokens": 2000, "tools": TOOLS,
                              "tool_choice": "auto"}),
    # a forced call whose argument cannot be short: it is still streaming after four events
    ("/v1/chat/completions", {"messages": LONG, "max_tokens": 2000, "tools": [STORY],
                              "tool_choice": "required"}),
    ("/v1/messages", {"messages": LONG, "max_tokens": 2000}),
    ("/v1/responses", {"input": LONG, "max_output_tokens": 2000, "store": False}),
])
async def test_a_cancelled_stream_frees_its_slot(server: ServerProcess, path: str,
                                                 body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as http:
        async def busy() -> bool:
            resp = await http.get("/slots")
            return any(s["is_processing"] for s in resp.json())

        async with http.stream("POST", path, json={**body, "stream": True}) as resp:
            assert resp.status_code == 200
            seen = 0
            # held: a line iterator left for the garbage collector is closed by trio at the
            # next checkpoint, which closes the connection before /slots is asked
            lines = resp.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    seen += 1
                if seen >= 4:
                    break
            assert await busy()
        # the connection is closed: the slot is free within a second
        took = await wait_until(lambda: _not(busy), timeout_s=1.0)
        assert took < 1.0


async def _not(predicate: Any) -> bool:
    return not await predicate()


# --- reasoning --------------------------------------------------------------------------------------
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
FORCED = 'root ::= "Plan" [a-z ]{0,12} "</think>" "Answer" [a-z ]{0,12}'


@pytest.fixture(scope="module")
def thinker() -> Iterator[ServerProcess]:
    from tests.serverproc import ROOT

    path = ROOT / "test-artifacts" / "think.jinja"
    path.parent.mkdir(exist_ok=True)
    path.write_text(THINK_TEMPLATE)
    with running_server("--model", "smollm2-135m-instruct", "--chat-template-file",
                        str(path)) as srv:
        yield srv


def test_reasoning_is_split_from_the_answer(thinker: ServerProcess) -> None:
    url = thinker.base_url + "/v1/chat/completions"
    body = {"messages": ASK, "grammar": FORCED, "max_tokens": 60, "temperature": 0}
    message = httpx.post(url, json=body, timeout=TIMEOUT).json()["choices"][0]["message"]
    assert message["reasoning_content"].startswith("Plan")
    assert message["content"].startswith("Answer")
    assert "think>" not in message["reasoning_content"] + message["content"]
    reasoning = content = ""
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=TIMEOUT) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    reasoning += choice["delta"].get("reasoning_content") or ""
                    content += choice["delta"].get("content") or ""
    assert (reasoning, content) == (message["reasoning_content"], message["content"])
    raw = httpx.post(url, json={**body, "reasoning_format": "none"}, timeout=TIMEOUT).json()
    assert raw["choices"][0]["message"]["content"] == (
        message["reasoning_content"] + "</think>" + message["content"])


def test_thinking_blocks_and_reasoning_items(thinker: ServerProcess) -> None:
    """Greedy decoding of one prompt: the three APIs report the same thinking."""
    chat = httpx.post(thinker.base_url + "/v1/chat/completions", json={
        "messages": ASK, "max_tokens": 24, "temperature": 0}, timeout=TIMEOUT).json()
    thought = chat["choices"][0]["message"]["reasoning_content"]
    assert thought
    with anthropic.Anthropic(base_url=thinker.base_url, api_key="k", max_retries=0) as claude:
        r = claude.messages.create(model="m", max_tokens=24, messages=ASK,  # type: ignore[arg-type]
                                   extra_body={"temperature": 0})
        assert r.content[0].type == "thinking"
        assert r.content[0].thinking == thought
        with claude.messages.stream(model="m", max_tokens=24, messages=ASK,  # type: ignore[arg-type]
                                    extra_body={"temperature": 0}) as stream:
            final = stream.get_final_message()
        assert final.content[0].type == "thinking"
        assert final.content[0].thinking == thought
    with openai.OpenAI(base_url=thinker.base_url + "/v1", api_key="k", max_retries=0) as client:
        resp = client.responses.create(model="m", input=ASK, max_output_tokens=24,  # type: ignore[arg-type]
                                       temperature=0, store=False)
        item = resp.output[0]
        assert item.type == "reasoning"
        assert item.content is not None
        assert item.content[0].text == thought


def test_a_forced_call_and_a_schema_answer_come_after_the_thinking(thinker: ServerProcess) -> None:
    """The template opens ``<think>``: the grammar lets the model think first, the reasoning
    is split off, and the call or the object after it is still forced and valid. A bias on
    the tokens of ``</think>`` makes the tiny model close its thought within the limit."""
    url = thinker.base_url
    ids = httpx.post(url + "/tokenize", json={"content": "</think>"},
                     timeout=TIMEOUT).json()["tokens"]
    bias = {str(t): 4 for t in ids}
    base = {"messages": ASK, "max_tokens": 200, "temperature": 0, "logit_bias": bias}
    r = httpx.post(url + "/v1/chat/completions", json={
        **base, "tools": TOOLS, "tool_choice": "required"}, timeout=TIMEOUT).json()
    message = r["choices"][0]["message"]
    assert r["choices"][0]["finish_reason"] == "tool_calls"
    assert message["reasoning_content"]
    assert "<tool_call>" not in message["reasoning_content"]
    for call in message["tool_calls"]:
        check_call(call["function"]["name"], call["function"]["arguments"])
    # the same for a schema: the tiny model may think past the limit, but the thought never
    # leaks into the content, and an answer, once begun, is the schema's object
    r = httpx.post(url + "/v1/chat/completions", json={**base, "response_format": {
        "type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}},
        timeout=TIMEOUT).json()
    message = r["choices"][0]["message"]
    assert message["reasoning_content"]
    assert "think>" not in (message["content"] or "")
    if r["choices"][0]["finish_reason"] == "stop":
        jsonschema.validate(json.loads(message["content"]), WEATHER)
        assert r["schema_valid"] is True
    else:
        assert message["content"] in ("", None)
