"""Fault injection through every family's HTTP layer: an exception raised at any stage of one
request ends that request, with an error, and nothing else.

The server is the real one with the embedded model, wrapped by :mod:`tests.faultserver` so
that a request sending ``X-Fault: <stage>`` has that stage raise on its behalf. For each
family, streamed and not (and with two choices where the family has them), each stage it
passes through is made to fail while a plain request runs beside it. Then:

* the faulted request ended, as an HTTP error before its first byte or as an error in its
  stream, within the timeout (no hang);
* the plain request beside it got its whole reply;
* the process is still up and every slot is free again.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, running_server

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}
CHAT = [{"role": "user", "content": "Say hi"}]


def native(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    return {"prompt": "Hello", "n_predict": 6, "stream": stream,
            **({"n_cmpl": n} if n > 1 else {}), **({"json_schema": SCHEMA} if schema else {})}


def chat(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    fmt = {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": SCHEMA}}} if schema else {}
    return {"messages": CHAT, "max_tokens": 6, "stream": stream, "n": n, **fmt}


def completions(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    return {"prompt": "Hello", "max_tokens": 6, "stream": stream, "n": n,
            **({"json_schema": SCHEMA} if schema else {})}


def messages(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    fmt = {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}} \
        if schema else {}
    return {"model": "m", "max_tokens": 6, "messages": CHAT, "stream": stream, **fmt}


def responses(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    fmt = {"text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA}}} \
        if schema else {}
    return {"input": "Say hi", "max_output_tokens": 16, "stream": stream, **fmt}


def generate(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    return {"model": "m", "prompt": "Hello", "stream": stream, "options": {"num_predict": 6},
            **({"format": SCHEMA} if schema else {})}


def ollama_chat(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    return {"model": "m", "messages": CHAT, "stream": stream, "options": {"num_predict": 6},
            **({"format": SCHEMA} if schema else {})}


def infer(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    return {"prompt": "Hello", "tokens": 6, "stream": stream}


def llama_go(stream: bool, n: int, schema: bool) -> dict[str, Any]:
    return {"prompt": "Hello", "tokens": 6}


# family: (path, body builder, streams?, choices?, chat template?, schema?)
FAMILIES: dict[str, tuple[str, Callable[[bool, int, bool], dict[str, Any]], bool, bool, bool,
                          bool]] = {
    "native": ("/completion", native, True, True, False, True),
    "openai-chat": ("/v1/chat/completions", chat, True, True, True, True),
    "openai-completions": ("/v1/completions", completions, True, True, False, True),
    "anthropic": ("/v1/messages", messages, True, False, True, True),
    "responses": ("/v1/responses", responses, True, False, True, True),
    "ollama-generate": ("/api/generate", generate, True, False, False, True),
    "ollama-chat": ("/api/chat", ollama_chat, True, False, True, True),
    "goinfer": ("/infer", infer, True, False, False, False),
    "llama-go": ("/api/completion", llama_go, False, False, False, False),
}
STAGES = ("parse", "prepare", "render", "engine", "delta", "validation", "outcome", "wire")


def cases() -> list[Any]:
    out = []
    for family, (_, _, streams, choices, templated, schema) in FAMILIES.items():
        shapes = [(False, 1)] + ([(True, 1)] if streams else []) + \
            ([(True, 2), (False, 2)] if choices else [])
        for stage in STAGES:
            if (stage == "render" and not templated) or (stage == "validation" and not schema):
                continue
            for stream, n in shapes:
                name = f"{family}-{stage}-{'stream' if stream else 'plain'}" + \
                    (f"-n{n}" if n > 1 else "")
                out.append(pytest.param(family, stage, stream, n, id=name))
    return out


@pytest.fixture(scope="module")
def server() -> Any:
    with running_server("--parallel", "3", module="tests.faultserver") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


async def faulted(client: httpx.AsyncClient, path: str, body: dict[str, Any], stage: str,
                  stream: bool) -> tuple[int, str]:
    """The status and the whole reply (a stream read to its end)."""
    headers = {"X-Fault": stage, "anthropic-version": "2023-06-01"}
    with trio.fail_after(30):  # a hang is a failure, not a slow test
        async with client.stream("POST", path, json=body, headers=headers) as resp:
            text = "".join([chunk async for chunk in resp.aiter_text()])
    return resp.status_code, text


def reports_an_error(status: int, text: str, stream: bool) -> bool:
    if status >= 500:
        return True
    if status != 200 or not stream:
        return False
    return ERROR.search(text) is not None


#: how each family's stream says it failed: an ``error`` member, Anthropic's error event,
#: a failed Responses object
ERROR = re.compile(r'"error"\s*:(?!\s*null)|^event: error$|"response\.failed"', re.MULTILINE)


@pytest.mark.parametrize(("family", "stage", "stream", "n"), cases())
async def test_a_fault_ends_that_request_and_nothing_else(
        client: httpx.AsyncClient, family: str, stage: str, stream: bool, n: int) -> None:
    path, build, _, _, _, _ = FAMILIES[family]
    body = build(stream, n, stage == "validation")
    result: dict[str, Any] = {}

    async def bystander() -> None:
        resp = await client.post("/completion", json={"prompt": "The sky is", "n_predict": 8,
                                                      "temperature": 0})
        result["bystander"] = resp

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bystander)
        status, text = await faulted(client, path, body, stage, stream)

    assert reports_an_error(status, text, stream), (status, text[-600:])
    assert "Traceback" not in text
    plain = result["bystander"]
    assert plain.status_code == 200, plain.text
    assert plain.json()["tokens_predicted"] == 8
    assert (await client.get("/health")).status_code == 200
    with trio.fail_after(5):
        while any(s["is_processing"] for s in (await client.get("/slots")).json()):  # noqa: ASYNC110 - polling another process
            await trio.sleep(0.05)


async def test_without_the_header_every_family_still_answers(client: httpx.AsyncClient) -> None:
    """The wrapper itself changes nothing: the same bodies succeed when no fault is asked."""
    for family, (path, build, streams, *_rest) in FAMILIES.items():
        for stream in [False, True] if streams else [False]:
            async with client.stream("POST", path, json=build(stream, 1, True),
                                     headers={"anthropic-version": "2023-06-01"}) as resp:
                text = "".join([chunk async for chunk in resp.aiter_text()])
            assert resp.status_code == 200, (family, stream, text[:300])
            assert ERROR.search(text) is None, (family, text[-300:])
            if not stream and resp.headers["content-type"].startswith("application/json"):
                json.loads(text)
