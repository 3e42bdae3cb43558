"""The OpenAI routes, driven by the real ``openai`` package (sync and async clients)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from grammar import Recognizer, convert, parse_gbnf, validate
from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, running_server

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "2") as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused",
                                  max_retries=0) as c:
        yield c


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="any", messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_uses_the_gemma_template_out_of_the_box(server: ServerProcess) -> None:
    resp = httpx.post(server.base_url + "/apply-template", json={"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]})
    assert resp.json()["prompt"] == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!"
        "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_trailing_assistant_message_is_a_prefill(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="any", messages=[
        {"role": "user", "content": "List three fruits."},
        {"role": "assistant", "content": "1. Apple\n2."}], max_tokens=6, temperature=0,
        extra_body={"cache_prompt": False})
    with_prefill = r.choices[0].message.content
    plain = client.completions.create(
        model="any", temperature=0, max_tokens=6,
        prompt="<start_of_turn>user\nList three fruits.<end_of_turn>\n<start_of_turn>model\n"
               "1. Apple\n2.", extra_body={"cache_prompt": False})
    assert with_prefill == plain.choices[0].text


def test_chat_stream_chunk_sequence(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Count to ten."}], max_tokens=12,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"cache_prompt": False}))
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert finish[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Count to ten."}], max_tokens=12,
        temperature=0, extra_body={"cache_prompt": False})
    assert text == whole.choices[0].message.content


async def test_async_client_streams_and_not(aclient: openai.AsyncOpenAI) -> None:
    r = await aclient.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Hello"}], max_tokens=5,
        temperature=0, seed=3)
    assert r.choices[0].message.content
    # cache_prompt off: a cached prefix changes the batch shape of the prompt's last token,
    # which this build's kernels may round differently (README, "Determinism")
    stream = await aclient.completions.create(model="any", prompt="Once upon a time",
                                              max_tokens=5, temperature=0, stream=True,
                                              extra_body={"cache_prompt": False})
    texts = [c.choices[0].text async for c in stream if c.choices]
    whole = await aclient.completions.create(model="any", prompt="Once upon a time",
                                             max_tokens=5, temperature=0,
                                             extra_body={"cache_prompt": False})
    assert "".join(texts) == whole.choices[0].text


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    {"type": "json_object", "schema": PERSON},
])
def test_structured_output(client: openai.OpenAI, fmt: dict[str, Any]) -> None:
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Bob is 30. Give him as JSON."}],
        response_format=fmt, max_tokens=80, temperature=0)  # type: ignore[arg-type]
    content = r.choices[0].message.content or ""
    assert validate(content, PERSON).valid, content
    assert r.model_extra is not None
    assert r.model_extra["schema_valid"] is True


def test_json_object_without_schema_gives_an_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "A JSON object about cats:"}],
        response_format={"type": "json_object"}, max_tokens=150, temperature=0, seed=1)
    content = r.choices[0].message.content or ""
    # whatever the length, every character so far follows an object's grammar
    recognizer = Recognizer(parse_gbnf(convert({"type": "object"}).gbnf))
    assert recognizer.longest_prefix(content) == len(content)
    assert content.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=3, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert len(content) == 3
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert content[0].token == content[0].top_logprobs[0].token
    t = client.completions.create(model="any", prompt="The sky is", max_tokens=2, temperature=0,
                                  logprobs=2)
    lp = t.choices[0].logprobs
    assert lp is not None
    assert lp.tokens is not None
    assert len(lp.tokens) == 2
    assert lp.top_logprobs is not None
    assert len(lp.top_logprobs[0]) == 2


def test_stop_seed_and_logit_bias(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "any", "prompt": "1, 2, 3, 4,", "max_tokens": 20,
                              "temperature": 0}
    base = client.completions.create(**kwargs).choices[0].text
    assert " 6" in base
    cut = client.completions.create(**kwargs, stop=" 6").choices[0]
    assert cut.text == base[: base.index(" 6")]
    assert cut.finish_reason == "stop"
    a = client.completions.create(model="any", prompt="Fruit:", max_tokens=8, seed=11,
                                  temperature=1.0).choices[0].text
    b = client.completions.create(model="any", prompt="Fruit:", max_tokens=8, seed=11,
                                  temperature=1.0).choices[0].text
    assert a == b
    forced = client.completions.create(model="any", prompt="x", max_tokens=2, temperature=0,
                                       logit_bias={"42": 100})
    assert forced.usage is not None
    assert forced.usage.completion_tokens == 2


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["gemma-3-270m-q4_k_m.gguf", "smollm2-135m-instruct"]
    extra = [m.model_extra or {} for m in models]
    assert extra[0]["status"] == {"value": "loaded"}  # the default, loaded at start
    assert "gemma3-270m" in extra[0]["aliases"]
    assert extra[0]["meta"]["architecture"] == "gemma3"
    assert extra[1]["status"] == {"value": "unloaded"}  # known, loads on demand


@pytest.mark.parametrize("messages", [
    None, "hello", [{}], [{"role": "wizard", "content": "hi"}], [{"role": "user", "content": 5}],
    [{"role": "user"}], [], [{"role": "user", "content": [{"type": "image_url"}]}],
])
def test_invalid_messages_are_400(server: ServerProcess, messages: Any) -> None:
    resp = httpx.post(server.base_url + "/v1/chat/completions",
                      json={"model": "x", "messages": messages}, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "messages" in err["message"]


@pytest.mark.parametrize(("body", "needle"), [
    ({"n": 3}, "'n': at most 2 (one per slot)"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "image input is not supported - hint: if this is unexpected, you may need to provide "
     "the mmproj"),
    ({"response_format": {"type": "xml"}}, "'response_format'"),
    ({"tool_choice": "required"}, "'tool_choice'"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"temperature": 3}, "'temperature'"),
    ({"logit_bias": {"abc": 1}}, "'logit_bias'"),
    ({"response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""}, "response_format"),
])
def test_bad_openai_fields(server: ServerProcess, body: dict[str, Any], needle: str) -> None:
    resp = httpx.post(server.base_url + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], **body}, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]


def test_several_choices_and_several_prompts(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=6, n=2)
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.message.role == "assistant" and c.finish_reason for c in chat.choices)
    assert chat.usage is not None
    assert 2 <= chat.usage.completion_tokens <= 12  # both choices' tokens
    text = client.completions.create(model="any", prompt=["The sky is", "Water is"],
                                     max_tokens=3, n=2, temperature=0)
    assert [c.index for c in text.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in text.choices)
    assert text.usage is not None
    assert text.usage.completion_tokens == 12
    # each prompt counted once
    one = client.completions.create(model="any", prompt="The sky is", max_tokens=1)
    two = client.completions.create(model="any", prompt="Water is", max_tokens=1)
    assert one.usage is not None
    assert two.usage is not None
    assert text.usage.prompt_tokens == one.usage.prompt_tokens + two.usage.prompt_tokens


def test_several_choices_stream_side_by_side(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=6, n=2,
        stream=True, stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    finished: dict[int, str] = {}
    roles = set()
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.add(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert roles == {0, 1}
    assert set(finished) == {0, 1}
    assert all(texts.values())
    assert usage is not None
    assert usage.completion_tokens >= 2
    text = client.completions.create(model="any", prompt=["The sky is", "Water is"],
                                     max_tokens=3, n=2, temperature=0, stream=True)
    by_index: dict[int, str] = {}
    for chunk in text:
        for c in chunk.choices:
            by_index[c.index] = by_index.get(c.index, "") + c.text
    assert sorted(by_index) == [0, 1, 2, 3]


def test_openai_client_sees_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="any", prompt="hi " * 5000, max_tokens=1)
    assert "exceed" in str(info.value)


@pytest.mark.parametrize(("strict", "mode"), [(False, None), (True, None), (False, "spec"),
                                             (True, "spec")])
def test_strict_closes_objects_without_additional_properties(
        client: openai.OpenAI, server: ServerProcess, strict: bool, mode: str | None) -> None:
    """By default (the generation shape) and with strict: true an object that does not say
    additionalProperties is closed: pushed towards ',' the model can only close it. In the
    spec-faithful shape without strict it is open, and the push starts an extra member."""
    comma = httpx.post(f"{server.base_url}/tokenize", json={"content": ","}).json()["tokens"]
    assert len(comma) == 1
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}},
              "required": ["n"]}
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Give n as JSON."}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "n", "schema": schema, "strict": strict}},  # type: ignore[typeddict-item]
        logit_bias={str(comma[0]): 100}, max_tokens=24, temperature=0,
        extra_body={"schema_mode": mode} if mode else None)
    content = r.choices[0].message.content or ""
    if strict or mode is None:
        assert json.loads(content).keys() == {"n"}, content
    else:
        assert "," in content, content  # an extra member began
