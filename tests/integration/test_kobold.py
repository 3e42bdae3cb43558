"""The KoboldAI API with the real default model, as a Kobold client uses it: generate,
stream, stop sequences, abort by genkey and the running text, token counts, the model's
facts, and errors in KoboldAI's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trio

from tests.integration.helpers import TIMEOUT, slots, wait_until
from tests.serverproc import ServerProcess, running_server

STORY = "Once upon a time, in a small village by the sea, there lived"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "2", "--ctx-size", "4096") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


async def kobold_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    async with client.stream("POST", "/api/extra/generate/stream", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = None
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                assert kind == "message"  # KoboldCpp names every event
                events.append(json.loads(line[6:]))
                kind = None
    return events


async def test_generate_is_the_native_completion(client: httpx.AsyncClient) -> None:
    body = {"prompt": STORY, "max_length": 12, "temperature": 0, "top_k": 1, "rep_pen": 1.0}
    out = (await client.post("/api/v1/generate", json=body)).json()
    [result] = out["results"]
    native = (await client.post("/completion", json={
        "prompt": STORY, "n_predict": 12, "temperature": 0, "top_k": 1})).json()
    assert result["text"] == native["content"]
    assert result["text"].strip()
    assert result["finish_reason"] == "length"
    assert result["completion_tokens"] == 12
    assert result["prompt_tokens"] == native["tokens_evaluated"]


async def test_the_stream_carries_the_same_text_then_the_finish(client: httpx.AsyncClient) -> None:
    body = {"prompt": STORY, "max_length": 16, "temperature": 0, "top_k": 1}
    events = await kobold_stream(client, body)
    plain = (await client.post("/api/v1/generate", json=body)).json()["results"][0]
    assert len(events) > 2  # token by token, not one block
    assert all(e["finish_reason"] == "null" for e in events[:-1])
    assert events[-1]["finish_reason"] == "length"
    assert "".join(e["token"] for e in events) == plain["text"]


async def test_a_stop_sequence_is_trimmed_unless_asked_to_keep_it(
        client: httpx.AsyncClient) -> None:
    body = {"prompt": "Count: 1, 2, 3, 4,", "max_length": 30, "temperature": 0, "top_k": 1}
    free = (await client.post("/api/v1/generate", json=body)).json()["results"][0]["text"]
    assert "," in free, free
    cut = free.index(",")
    stop = free[cut:cut + 1]
    trimmed = (await client.post("/api/v1/generate", json={
        **body, "stop_sequence": [stop]})).json()["results"][0]
    kept = (await client.post("/api/v1/generate", json={
        **body, "stop_sequence": [stop], "trim_stop": False})).json()["results"][0]
    assert trimmed == {**trimmed, "text": free[:cut], "finish_reason": "stop"}
    assert kept["text"] == free[:cut] + stop
    streamed = await kobold_stream(client, {**body, "stop_sequence": [stop], "trim_stop": False})
    assert "".join(e["token"] for e in streamed) == kept["text"]
    assert streamed[-1]["finish_reason"] == "stop"


async def test_abort_by_genkey_ends_that_stream_and_check_shows_its_text(
        client: httpx.AsyncClient, server: ServerProcess) -> None:
    body = {"prompt": STORY, "max_length": 2000, "genkey": "KCPP1234", "ban_eos_token": True}
    other = {**body, "genkey": "KCPP9999", "max_length": 400}
    seen: list[dict[str, Any]] = []
    other_seen: list[dict[str, Any]] = []

    async def read(into: list[dict[str, Any]], b: dict[str, Any]) -> None:
        into.extend(await kobold_stream(client, b))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, seen, body)
        nursery.start_soon(read, other_seen, other)

        async def busy() -> bool:
            return sum(s["is_processing"] for s in await slots(client, server.base_url)) == 2
        await wait_until(busy, timeout_s=30)
        await trio.sleep(0.5)
        partial = (await client.post("/api/extra/generate/check",
                                     json={"genkey": "KCPP1234"})).json()
        nobody = (await client.post("/api/extra/generate/check", json={"genkey": "x"})).json()
        keyless = (await client.get("/api/extra/generate/check")).json()
        assert keyless == {"results": [{"text": ""}]}
        assert partial["results"][0]["text"].strip()
        assert nobody == {"results": [{"text": ""}]}
        aborted = (await client.post("/api/extra/abort", json={"genkey": "KCPP1234"})).json()
        assert aborted == {"success": "true", "done": "true"}
        with trio.fail_after(10):
            while not seen:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert sum(s["is_processing"] for s in await slots(client, server.base_url)) == 1
        missing = (await client.post("/api/extra/abort", json={"genkey": "nope"})).json()
        assert missing["success"] == "false"
        nursery.cancel_scope.cancel()  # the other client leaves
    assert seen[-1]["finish_reason"] == "length"
    assert len(seen) < 2000
    assert "".join(e["token"] for e in seen).startswith(partial["results"][0]["text"])


async def test_tokencount_is_the_tokenizer(client: httpx.AsyncClient) -> None:
    counted = (await client.post("/api/extra/tokencount", json={"prompt": STORY})).json()
    native = (await client.post("/tokenize", json={"content": STORY,
                                                   "add_special": True})).json()["tokens"]
    assert counted == {"value": len(native), "ids": native}


async def test_the_model_and_its_facts(client: httpx.AsyncClient) -> None:
    name = (await client.get("/v1/models")).json()["data"][0]["id"]
    assert (await client.get("/api/v1/model")).json() == {"result": f"koboldcpp/{name}"}
    version = (await client.get("/api/extra/version")).json()
    assert version["result"] == "KoboldCpp"
    assert version["protected"] is False
    assert (await client.get("/api/v1/info/version")).json() == {"result": "1.2.5"}
    assert (await client.get("/api/v1/config/max_context_length")).json() == {"value": 2048}
    assert (await client.get("/api/v1/config/max_length")).json() == {"value": 2048}


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x", "tfs": 0.5}, "tfs"),
    ({"prompt": "x", "banned_tokens": ["the"]}, "banned_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "max_length": 10**9}, "max_length"),
    ({"prompt": "x", "made_up": 1}, "made_up"),
    ({"max_length": 4}, "prompt"),
])
async def test_bad_bodies_are_400s_in_koboldai_shape(client: httpx.AsyncClient,
                                                     body: dict[str, Any], field: str) -> None:
    for route in ("/api/v1/generate", "/api/extra/generate/stream"):
        resp = await client.post(route, json=body)
        assert resp.status_code == 400, resp.text
        detail = resp.json()["detail"]
        assert set(detail) == {"msg", "type"}
        assert field in detail["msg"]


async def test_a_grammar_constrains_the_answer(client: httpx.AsyncClient) -> None:
    out = (await client.post("/api/v1/generate", json={
        "prompt": "Is the sea wet? Answer:", "max_length": 8, "temperature": 0,
        "grammar": 'root ::= " yes" | " no"'})).json()["results"][0]
    assert out["text"] in (" yes", " no")
    assert out["finish_reason"] == "stop"
