"""Several models behind one server (router mode) with the real engine: two aliases over the
embedded models in a models directory, ``--models-max 1``, a broken file beside them; and
Ollama's routes through the ``ollama`` package."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import pytest
import trio

from app.engine.model import chat_model_path, default_model_path
from tests.integration.helpers import TIMEOUT, metric_value, wait_until
from tests.serverproc import ROOT, ServerProcess, running_server

BASE, CHAT = "base.gguf", "chat.gguf"


def multi_dir() -> Path:
    """``test-artifacts/multi``: the two embedded models under new names, and a GGUF file
    cut short that llama.cpp refuses to load."""
    folder = ROOT / "test-artifacts" / "multi"
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in ((BASE, default_model_path()), (CHAT, chat_model_path())):
        target = folder / name
        if not target.exists():
            try:
                target.hardlink_to(source)
            except OSError:
                shutil.copyfile(source, target)
    broken = folder / "broken.gguf"
    if not broken.exists():
        with default_model_path().open("rb") as fh:
            broken.write_bytes(fh.read(4_000_000))
    return folder


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--models-dir", str(multi_dir()), "--models-max", "1", "--parallel",
                        "2", "--ctx-size", "4096", "--metrics") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


async def statuses(client: httpx.AsyncClient) -> dict[str, Any]:
    data = (await client.get("/v1/models")).json()["data"]
    return {m["id"]: m["status"] for m in data}


async def complete(client: httpx.AsyncClient, model: str, n: int = 4, **extra: Any) -> Any:
    resp = await client.post("/completion", json={"model": model, "prompt": "Once upon a time",
                                                  "n_predict": n, "temperature": 0, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_every_model_is_listed_and_nothing_loads_at_start(client: httpx.AsyncClient) -> None:
    data = (await client.get("/v1/models")).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert {BASE, CHAT, "broken.gguf", "gemma3-270m", "smollm2-135m-instruct"} <= set(by_id)
    assert by_id[BASE]["aliases"] == ["base"]
    assert (await client.get("/models")).json()["data"] == data  # llama.cpp's other path
    # router mode without --model: every model waits to be asked for (this runs first)
    assert all(m["status"]["value"] in ("unloaded", "loaded", "failed") for m in data)
    assert (await client.get("/health")).status_code == 200


async def test_load_on_demand_then_swap_with_models_max_1(client: httpx.AsyncClient) -> None:
    out = await complete(client, "base")  # by alias
    assert out["model"] == BASE
    assert (await statuses(client))[BASE]["value"] == "loaded"
    out = await complete(client, CHAT)
    assert out["model"] == CHAT
    st = await statuses(client)
    assert st[CHAT]["value"] == "loaded"
    assert st[BASE]["value"] == "unloaded"  # evicted: one model at a time
    loaded = [m["name"] for m in (await client.get("/api/ps")).json()["models"]]
    assert loaded == [CHAT]


async def test_requests_to_both_models_at_once_all_complete(client: httpx.AsyncClient) -> None:
    results: dict[int, Any] = {}

    async def one(i: int, model: str) -> None:
        results[i] = await complete(client, model, n=3)

    async with trio.open_nursery() as nursery:
        for i, model in enumerate([BASE, CHAT, BASE, CHAT, BASE]):
            nursery.start_soon(one, i, model)
            await trio.sleep(0.05)
    assert [results[i]["model"] for i in range(5)] == [BASE, CHAT, BASE, CHAT, BASE]
    assert all(r["tokens_predicted"] == 3 for r in results.values())
    # the same prompt on the same model gives the same greedy text, however it was scheduled
    assert results[0]["content"] == results[2]["content"] == results[4]["content"]


async def test_an_unknown_model_is_a_404_listing_the_known_ones(client: httpx.AsyncClient) -> None:
    for route, body in [("/completion", {"prompt": "x"}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                  "stream": True})]:
        resp = await client.post(route, json={**body, "model": "gpt-4o"})
        assert resp.status_code == 404
        error = resp.json()["error"]
        assert error["param"] == "model"
        assert "'gpt-4o' not found" in error["message"]
        assert BASE in error["message"]
        assert CHAT in error["message"]
    resp = await client.post("/api/generate", json={"model": "nope", "prompt": "x"})
    assert resp.status_code == 404
    assert "'nope' not found" in resp.json()["error"]  # Ollama's shape


async def test_no_model_named_and_none_default_is_a_400(client: httpx.AsyncClient) -> None:
    await client.post("/models/unload", json={"model": BASE})
    await client.post("/models/unload", json={"model": CHAT})
    resp = await client.post("/completion", json={"prompt": "x"})
    assert resp.status_code == 400
    assert "'model' is required" in resp.json()["error"]["message"]


async def test_a_model_that_fails_to_load_is_reported_and_the_others_serve(
        client: httpx.AsyncClient) -> None:
    resp = await client.post("/completion", json={"model": "broken", "prompt": "x"})
    assert resp.status_code == 500
    assert "could not load model 'broken.gguf'" in resp.json()["error"]["message"]
    status = (await statuses(client))["broken.gguf"]
    assert status["value"] == "failed"
    assert status["failed"] is True
    assert "broken.gguf" in status["error"]
    assert (await complete(client, BASE))["model"] == BASE
    assert (await client.get("/health")).status_code == 200


async def test_a_stream_waits_with_pings_while_its_model_loads(client: httpx.AsyncClient) -> None:
    await client.post("/models/unload", json={"model": CHAT})
    await complete(client, BASE)  # CHAT is unloaded now
    lines = []
    async with client.stream("POST", "/v1/chat/completions", json={
            "model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
            "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            lines.append(line)
    assert lines[0] == ": ping"  # sent before the model was loaded
    data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert data[0]["model"] == CHAT
    assert lines[-2] == "data: [DONE]"
    # a stream to a model that fails: pings, then one error event with the HTTP error's body
    async with client.stream("POST", "/completion", json={
            "model": "broken", "prompt": "x", "stream": True}) as resp:
        assert resp.status_code == 200
        body = (await resp.aread()).decode()
    error = json.loads(body.split("data: ", 1)[1])["error"]
    assert "could not load model 'broken.gguf'" in error["message"]
    assert error["code"] == 500


async def test_a_client_that_leaves_while_its_model_loads_costs_nothing(
        client: httpx.AsyncClient) -> None:
    await complete(client, BASE)
    with trio.move_on_after(0.3):  # leave before the model can have loaded
        async with client.stream("POST", "/completion", json={
                "model": CHAT, "prompt": "x", "n_predict": 64, "stream": True}) as resp:
            async for _ in resp.aiter_lines():
                pass

    async def settled() -> bool:
        return (await statuses(client))[CHAT]["value"] in ("loaded", "unloaded")

    await wait_until(settled, timeout_s=30)
    # either the load was cancelled, or it finished with nobody using the model
    slots = (await client.get("/slots", params={"model": BASE})).json()
    assert not any(s["is_processing"] for s in slots)
    assert (await complete(client, CHAT))["model"] == CHAT  # and it serves afterwards


async def test_unload_under_load_ends_the_running_stream_cleanly(
        client: httpx.AsyncClient) -> None:
    await complete(client, BASE)
    events: list[dict[str, Any]] = []

    async def long_stream() -> None:
        async with client.stream("POST", "/completion", json={
                "model": BASE, "prompt": "Count:", "n_predict": 2000, "stream": True}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_stream)

        async def streaming() -> bool:
            return len(events) >= 3

        await wait_until(streaming, timeout_s=30)
        resp = await client.post("/models/unload", json={"model": BASE})
        assert resp.status_code == 200
        assert resp.json() == {"success": True, "model": BASE}
    final = events[-1]
    assert final["stop"] is True
    assert final["model_changed"] is True
    assert final["tokens_predicted"] < 2000
    assert (await statuses(client))[BASE]["value"] == "unloaded"
    assert (await complete(client, BASE))["model"] == BASE  # loads again


async def test_models_load_and_unload_routes(client: httpx.AsyncClient) -> None:
    resp = await client.post("/models/load", json={"model": CHAT})
    assert resp.json() == {"success": True, "model": CHAT}
    assert (await statuses(client))[CHAT]["value"] == "loaded"
    assert (await client.post("/models/load", json={"model": "nope"})).status_code == 404
    assert (await client.post("/models/load", json={})).status_code == 400
    assert (await client.post("/models/unload", json={"model": CHAT})).status_code == 200
    assert (await statuses(client))[CHAT]["value"] == "unloaded"


async def test_metrics_carry_the_model(client: httpx.AsyncClient) -> None:
    await complete(client, BASE, n=5)
    text = (await client.get("/metrics")).text
    assert f'sluice:model_loaded{{model="{BASE}"}} 1' in text
    assert f'sluice:model_loaded{{model="{CHAT}"}} 0' in text
    assert metric_value(text, "llamacpp:tokens_predicted_total", BASE) >= 5
    assert metric_value(text, "sluice:model_load_failures_total", "broken.gguf") >= 1


# --- Ollama's API through its own client ---------------------------------------------------
@pytest.fixture
def ol(server: ServerProcess) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.base_url, timeout=60)
    yield client
    client._client.close()


# Greedy replies are compared only between requests that find the same prompt cached: without
# flash attention, llama.cpp's logits for a prompt's last token differ slightly when it is
# evaluated alone after a cached prefix (llama-server -fa off shows the same), enough to flip
# a near tie of this small model.


async def test_ollama_list_generate_and_keep_alive_zero(ol: ollama.Client,
                                                        client: httpx.AsyncClient) -> None:
    names = [m.model for m in ol.list().models]
    assert BASE in names
    assert CHAT in names
    for _ in range(2):  # the second finds its prompt cached, as the stream below will
        reply = await trio.to_thread.run_sync(lambda: ol.generate(
            model="chat", prompt="Say hello.", options={"num_predict": 6, "temperature": 0}))
    assert reply.done is True
    assert reply.done_reason == "length"
    assert reply.eval_count == 6
    assert reply.response
    assert reply.prompt_eval_count is not None
    assert reply.prompt_eval_count > 0
    assert [m.model for m in ol.ps().models] == [CHAT]
    # streamed: the pieces add up to the whole reply of the same greedy request
    pieces = await trio.to_thread.run_sync(lambda: list(ol.generate(
        model="chat", prompt="Say hello.", stream=True,
        options={"num_predict": 6, "temperature": 0})))
    assert pieces[-1].done is True
    assert "".join(p.response for p in pieces) == reply.response
    # keep_alive 0: unloaded once the request ends
    await trio.to_thread.run_sync(lambda: ol.generate(
        model="chat", prompt="Hi", keep_alive=0, options={"num_predict": 2}))

    async def gone() -> bool:
        return not (await client.get("/api/ps")).json()["models"]

    await wait_until(gone, timeout_s=10)
    # an empty prompt loads the model, and with keep_alive 0 unloads it, as Ollama
    loaded = await trio.to_thread.run_sync(lambda: ol.generate(model="chat", prompt=""))
    assert loaded.done_reason == "load"
    assert [m.model for m in ol.ps().models] == [CHAT]
    unloaded = await trio.to_thread.run_sync(lambda: ol.generate(model="chat", prompt="",
                                                                 keep_alive=0))
    assert unloaded.done_reason == "unload"
    assert not ol.ps().models


async def test_ollama_chat_stream_format_and_tools(ol: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name a color."}]
    for _ in range(2):  # see above: the second finds its prompt cached, as the stream will
        whole = await trio.to_thread.run_sync(lambda: ol.chat(
            model=CHAT, messages=messages, options={"num_predict": 8, "temperature": 0}))
    assert whole.message.role == "assistant"
    assert whole.message.content
    parts = await trio.to_thread.run_sync(lambda: list(ol.chat(
        model=CHAT, messages=messages, stream=True, options={"num_predict": 8, "temperature": 0})))
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    schema = {"type": "object", "properties": {"color": {"type": "string", "maxLength": 20}},
              "required": ["color"], "additionalProperties": False}
    shaped = await trio.to_thread.run_sync(lambda: ol.chat(
        model=CHAT, messages=messages, format=schema, options={"num_predict": 40}))
    jsonschema.validate(json.loads(shaped.message.content or ""), schema)

    def get_weather(city: str) -> str:
        """Get the weather in a city.

        Args:
            city: the city's name
        """
        return "sunny"

    called = await trio.to_thread.run_sync(lambda: ol.chat(
        model=CHAT, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[get_weather], options={"num_predict": 60, "temperature": 0}))
    calls = called.message.tool_calls or []
    # the model may answer in words ("auto"); when it calls, the call is whole and valid
    for call in calls:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)
    # a tool result turn goes back in Ollama's shape
    follow = await trio.to_thread.run_sync(lambda: ol.chat(model=CHAT, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "sunny"}],
        options={"num_predict": 8}))
    assert follow.message.content is not None


async def test_ollama_errors_in_its_shape(ol: ollama.Client, client: httpx.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        await trio.to_thread.run_sync(lambda: ol.generate(model="nope", prompt="x"))
    assert info.value.status_code == 404
    assert "'nope' not found" in info.value.error
    resp = await client.post("/api/chat", json={"model": CHAT, "messages": [
        {"role": "user", "content": "x", "images": ["aGk="]}]})
    assert resp.status_code == 400
    assert "vision" in resp.json()["error"]
    resp = await client.post("/api/generate", json={"model": CHAT, "prompt": "x",
                                                    "options": {"temperature": "hot"}})
    assert resp.status_code == 400
    assert "options.temperature" in resp.json()["error"]
    for route, extra in (("/api/generate", {"prompt": "x"}),
                         ("/api/chat", {"messages": [{"role": "user", "content": "x"}]})):
        resp = await client.post(route, json={"model": CHAT, "stream": False, **extra,
                                              "format": {"type": "string", "pattern": "(?=x)"}})
        assert resp.status_code == 400
        assert "'format'" in resp.json()["error"]  # Ollama's field, not an internal one
    resp = await client.post("/api/generate", json={"model": CHAT, "prompt": "x",
                                                    "keep_alive": "soon"})
    assert resp.status_code == 400
    assert "keep_alive" in resp.json()["error"]


def test_an_idle_model_is_unloaded_and_the_next_request_reloads_it() -> None:
    with running_server("--models-dir", str(multi_dir()), "--model", BASE,
                        "--sleep-idle-seconds", "1", "--parallel", "1") as srv:
        base = srv.base_url

        def status() -> str:
            data = httpx.get(base + "/v1/models", timeout=TIMEOUT).json()["data"]
            return str(next(m["status"]["value"] for m in data if m["id"] == BASE))

        assert status() == "loaded"  # --model: loaded at start, and the default
        import time

        def sleeping() -> bool:
            props = httpx.get(base + "/props", timeout=TIMEOUT).json()
            assert props["model_alias"] == BASE
            return bool(props["is_sleeping"])

        assert not sleeping()
        # asking /props every 0.1 s neither keeps the model awake nor wakes it (llama.cpp's)
        deadline = time.monotonic() + 15
        while not sleeping() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status() == "unloaded"
        assert sleeping()
        assert status() == "unloaded"
        assert httpx.get(base + "/health", timeout=TIMEOUT).status_code == 200
        out = httpx.post(base + "/completion", json={"prompt": "Hi", "n_predict": 2},
                         timeout=TIMEOUT).json()  # no model named: the default, reloaded
        assert out["tokens_predicted"] == 2
        assert out["model"] == BASE
        assert not sleeping()
