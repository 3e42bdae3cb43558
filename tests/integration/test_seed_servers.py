"""The seed servers' routes: goinfer (with model switching and /ws), llama-go, Rust llm, llm-api."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, models_dir, running_server

MODELS = Path(__file__).resolve().parents[2] / "test-artifacts" / "models"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    models_dir("models", "first.gguf", "second.gguf")
    (MODELS / "notes.txt").write_text("not a model")
    with running_server("--models-dir", str(MODELS), "--model", "first.gguf", "--parallel",
                        "2") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


# --- goinfer ----------------------------------------------------------------------------------
async def test_model_state_lists_names(client: httpx.AsyncClient) -> None:
    state = (await client.get("/model/state")).json()
    assert state["isModelLoaded"] is True
    assert state["models"] == ["first.gguf", "second.gguf"]
    assert state["loadedModel"] in state["models"]
    assert state["ctx"] == 8192


async def test_infer_with_template_and_timings(client: httpx.AsyncClient) -> None:
    out = (await client.post("/infer", json={"prompt": "2+2", "template": "Q: {prompt}\nA:",
                                             "tokens": 6, "temp": 0, "topK": 10})).json()
    assert set(out) >= {"text", "thinkingTime", "thinkingTimeFormat", "emitTime",
                        "emitTimeFormat", "totalTime", "totalTimeFormat", "tokensPerSecond",
                        "totalTokens"}
    assert out["totalTokens"] == 6
    assert out["totalTimeFormat"].endswith("s")
    native = (await client.post("/completion", json={
        "prompt": "Q: 2+2\nA:", "n_predict": 6, "temperature": 0, "top_k": 10,
        "cache_prompt": False})).json()
    assert out["text"] == native["content"]


async def test_infer_stream(client: httpx.AsyncClient) -> None:
    events = []
    async with client.stream("POST", "/infer", json={"prompt": "Hello", "tokens": 4,
                                                     "stream": True}) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    tokens, final = events[:-1], events[-1]
    assert [e["num"] for e in tokens] == list(range(len(tokens)))
    assert final["msgType"] == "system"
    assert final["content"] == "result"
    assert final["data"]["text"] == "".join(e["content"] for e in tokens)


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x", "tfs": 0.9}, "tfs"),
    ({"prompt": "x", "threads": 64}, "threads"),
    ({"prompt": "x", "template": "no slot"}, "template"),
    ({"prompt": "x", "topK": -1}, "topK"),
    ({"prompt": "x", "mirostat": 2}, "mirostat"),
])
async def test_infer_bad_params(client: httpx.AsyncClient, body: dict[str, object],
                                field: str) -> None:
    resp = await client.post("/infer", json=body)
    assert resp.status_code == 400
    assert field in resp.json()["error"]["message"]


async def test_infer_abort_and_ws_feed(server: ServerProcess, client: httpx.AsyncClient) -> None:
    assert (await client.get("/infer/abort")).status_code == 202
    ws_url = server.base_url.replace("http://", "ws://") + "/ws"
    received: list[dict[str, object]] = []
    result: dict[str, object] = {}

    async def run_infer() -> None:
        resp = await client.post("/infer", json={"prompt": "Once upon a time", "tokens": 4000})
        result.update(resp.json())

    async with open_websocket_url(ws_url) as ws, trio.open_nursery() as nursery:
        nursery.start_soon(run_infer)
        with trio.fail_after(20):
            while len(received) < 5:
                received.append(json.loads(await ws.get_message()))
        assert (await client.get("/infer/abort")).status_code == 204
    assert [m["nToken"] for m in received] == list(range(5))
    assert all(isinstance(m["msg"], str) for m in received)
    assert result["aborted"] is True
    assert 5 <= int(result["totalTokens"]) < 4000


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "../first.gguf"}, 400),
    ({"model": "/etc/passwd"}, 400),
    ({"model": "missing.gguf"}, 404),
    ({"model": "notes.txt"}, 404),
    ({"name": ".."}, 400),
    ({}, 400),
])
async def test_model_load_refuses_paths_and_unknown_names(
        client: httpx.AsyncClient, body: dict[str, str], status: int) -> None:
    resp = await client.post("/model/load", json=body)
    assert resp.status_code == status, resp.text


async def test_switching_models_while_requests_run(client: httpx.AsyncClient) -> None:
    running: dict[str, object] = {}
    health: list[int] = []
    waiting: dict[str, object] = {}

    async def long_request() -> None:
        resp = await client.post("/completion", json={"prompt": "x", "n_predict": 4000,
                                                      "ignore_eos": True})
        running.update(resp.json())

    async def new_request() -> None:
        resp = await client.post("/completion", json={"prompt": "The sky", "n_predict": 3})
        waiting.update(status=resp.status_code, **resp.json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_request)
        await trio.sleep(0.5)
        load_done = trio.Event()

        async def load() -> None:
            resp = await client.post("/model/load", json={"model": "second.gguf", "ctx": 4096})
            assert resp.status_code == 204
            load_done.set()

        nursery.start_soon(load)
        await trio.sleep(0.05)
        nursery.start_soon(new_request)
        while not load_done.is_set():
            health.append((await client.get("/health")).status_code)
            await trio.sleep(0.01)
    assert running["model_changed"] is True
    assert running["stop"] is True
    assert 503 in health
    assert waiting["status"] == 200
    assert waiting["tokens_predicted"] == 3
    state = (await client.get("/model/state")).json()
    assert state["loadedModel"] == "second.gguf"
    assert state["ctx"] == 4096
    assert (await client.get("/health")).status_code == 200


async def test_unload_then_the_next_request_loads_again(client: httpx.AsyncClient) -> None:
    assert (await client.get("/model/unload")).status_code == 204
    assert (await client.get("/model/state")).json()["isModelLoaded"] is False
    assert (await client.get("/health")).status_code == 200  # it can load on demand
    resp = await client.post("/completion", json={"prompt": "x", "n_predict": 2})
    assert resp.status_code == 200
    assert resp.json()["tokens_predicted"] == 2
    assert (await client.get("/model/state")).json()["isModelLoaded"] is True
    assert (await client.post("/model/load", json={"name": "first"})).status_code == 204
    assert (await client.get("/health")).status_code == 200


async def test_ws_can_be_disabled() -> None:
    with running_server("--no-ws", "--parallel", "1") as srv:
        handshake = {"Connection": "Upgrade", "Upgrade": "websocket",
                     "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        async with httpx.AsyncClient() as plain:
            resp = await plain.get(srv.base_url + "/ws", headers=handshake)
        assert resp.status_code == 403


# --- llama-go --------------------------------------------------------------------------------
async def test_llama_go_completion(client: httpx.AsyncClient) -> None:
    out = (await client.post("/api/completion", json={
        "prompt": "The capital of France is", "tokens": 5, "temp": 0, "top_k": 20,
        "repeat_penalty": 1.1, "repeat_lastn": 32})).json()
    assert set(out) == {"Prompt", "Text", "Tokens", "CompleteReason"}
    assert out["Prompt"] == "The capital of France is"
    assert out["Tokens"] == 5
    assert out["CompleteReason"] == "MaxTokens"
    assert out["Text"]
    bad = await client.post("/api/completion", json={"prompt": "x", "temperature": 1})
    assert bad.status_code == 400
    assert "temperature" in bad.json()["error"]["message"]


# --- Rust llm /stream ----------------------------------------------------------------------
async def stream_text(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[str, httpx.Headers]:
    async with client.stream("POST", "/stream", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        return "".join([chunk async for chunk in resp.aiter_text()]), resp.headers


async def test_stream_plain_text_defaults_to_32_tokens(client: httpx.AsyncClient) -> None:
    text, headers = await stream_text(client, {"prompt": "Once upon a time", "temp": 0,
                                               "n_batch": 8})
    assert headers["x-sluice-ignored"] == "n_batch"
    native = (await client.post("/completion", json={
        "prompt": "Once upon a time", "n_predict": 32, "temperature": 0,
        "cache_prompt": False})).json()
    assert native["tokens_predicted"] == 32
    assert len(text) > 0


async def test_stream_cache_id_restores_the_evaluated_prompt(client: httpx.AsyncClient) -> None:
    prefix = "A long shared story prefix about rivers, mountains and valleys. " * 6
    await stream_text(client, {"prompt": prefix, "num_predict": 2, "temp": 0, "cache": "tale"})
    # wipe every slot so only the saved cache can supply the prefix
    for slot in (await client.get("/slots")).json():
        await client.post("/completion", json={"prompt": f"unrelated {slot['id']}",
                                               "n_predict": 1, "id_slot": slot["id"],
                                               "cache_prompt": False})
    metrics_before = (await client.get("/slots")).json()
    assert all(s["n_cached"] < 20 for s in metrics_before)
    await stream_text(client, {"prompt": prefix + "The end.", "num_predict": 2, "temp": 0,
                               "cache": "tale"})
    slots = (await client.get("/slots")).json()
    assert max(s["n_cached"] for s in slots) > 60


# --- llm-api ------------------------------------------------------------------------------------
async def test_llm_api_predict_with_stop_regex(client: httpx.AsyncClient) -> None:
    resp = await client.post("/predict", data={"prompt": "1, 2, 3, 4,", "temperature": "0",
                                                "max_tokens": "30", "stopRegex": r"\b7\b"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert "5, 6" in resp.text
    assert "7" not in resp.text


async def test_llm_api_chat_with_builtin_templates(client: httpx.AsyncClient) -> None:
    for template in ("llama-2", "vicuna_v1.1"):
        resp = await client.post("/chat", data={"messages": ["Hello", "Hi!", "How are you?"],
                                                "template": template, "max_tokens": "8",
                                                "temperature": "0"})
        assert resp.status_code == 200, resp.text
        assert resp.text


@pytest.mark.parametrize(("route", "data", "needle"), [
    ("/predict", {"prompt": "x", "stopRegex": "(unclosed"}, "stopRegex"),
    ("/predict", {"temperature": "0"}, "prompt"),
    ("/predict", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/predict", {"prompt": "x", "bogus": "1"}, "bogus"),
    ("/chat", {"messages": ["a", "b"]}, "alternate"),
    ("/chat", {"messages": ["a"], "template": "nope"}, "template"),
])
async def test_llm_api_errors_are_plain_text(client: httpx.AsyncClient, route: str,
                                             data: dict[str, object], needle: str) -> None:
    resp = await client.post(route, data=data)
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("text/plain")
    assert needle in resp.text


async def test_llm_api_needs_a_form(client: httpx.AsyncClient) -> None:
    resp = await client.post("/predict", json={"prompt": "x"})
    assert resp.status_code == 400
    assert "x-www-form-urlencoded" in resp.text
