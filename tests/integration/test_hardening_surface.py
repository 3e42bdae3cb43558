"""Hostile requests on the newer surface, from outside (issue: no request can end the process,
read what it should not, or stall the loop). Each test is one finding: it failed on the code
before the fix."""

from __future__ import annotations

import functools
import gc
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, running_server

ID_ANCHOR = {"$ref": "#n", "$defs": {"n": {"id": "#n", "const": 1}}}


@pytest.fixture(scope="module")
def server() -> Any:
    with running_server("--parallel", "2") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


# --- 1: what validation cannot resolve is refused before generation, streamed or not, n > 1 ---
@pytest.mark.parametrize("extra", [{}, {"stream": True, "n_cmpl": 2}])
async def test_a_schema_only_the_converter_resolves_is_a_400(
        client: httpx.AsyncClient, extra: dict[str, Any]) -> None:
    resp = await client.post("/completion", json={"prompt": "x", "json_schema": ID_ANCHOR,
                                                  "n_predict": 4, **extra})
    assert resp.status_code == 400, resp.text
    assert "#n" in resp.json()["error"]["message"]
    assert (await client.get("/health")).status_code == 200
    ok = await client.post("/completion", json={"prompt": "x", "n_predict": 2, "n_cmpl": 2})
    assert ok.status_code == 200


# --- 2: the websocket feed is behind the key and an Origin allow-list -----------------------
# trio-websocket leaves its socket to the garbage collector when the server closes first
@pytest.mark.filterwarnings("ignore:Exception ignored in. <socket.socket"
                            ":pytest.PytestUnraisableExceptionWarning")
async def test_the_token_feed_needs_the_key_and_a_known_origin() -> None:
    with running_server("--parallel", "1", "--api-key", "sekrit") as srv:
        ws = srv.base_url.replace("http://", "ws://") + "/ws"
        for url, headers in ((ws, []), (ws + "?api_key=wrong", []),
                             (ws + "?api_key=sekrit", [("Origin", "http://evil.example")])):
            assert await close_code(url, headers) == 1008
            gc.collect()  # the socket trio-websocket dropped goes now, under this test's filter
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=TIMEOUT,
                                     headers={"Authorization": "Bearer sekrit"}) as c:
            for url, headers in ((ws + "?api_key=sekrit", []),
                                 (ws, [("Authorization", "Bearer sekrit"),
                                       ("Origin", srv.base_url)])):
                async with open_websocket_url(url, extra_headers=headers) as conn, \
                        trio.open_nursery() as nursery:
                    nursery.start_soon(functools.partial(
                        c.post, "/infer", json={"prompt": "Once", "tokens": 3}))
                    with trio.fail_after(30):
                        message = json.loads(await conn.get_message())
                    assert message["nToken"] == 0
    gc.collect()  # the sockets trio-websocket dropped go now, under this test's filter


async def close_code(url: str, headers: list[tuple[str, str]]) -> int | None:
    async with open_websocket_url(url, extra_headers=headers) as conn:
        try:
            await conn.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code
    return None


# --- 3, 4: proportional work off the event loop, and refused before it is done --------------
async def health_while(client: httpx.AsyncClient,
                       work: Callable[[], Awaitable[httpx.Response]]) -> tuple[httpx.Response,
                                                                               list[float]]:
    """Run ``work`` while polling /health every 20 ms; the latencies in ms.

    A run whose p99 is 100 ms or more is repeated once, and the second run counts: on this
    2-core machine the rest of the suite (a server shutting down, the browser) delays a probe
    now and then (one 105 ms probe in a full run, 37 ms at most alone). A stall the server
    itself causes, a long C call holding the GIL, happens in both runs.
    """
    resp, latencies = await _probed(client, work)
    if p99(latencies) >= 100:
        resp, latencies = await _probed(client, work)
    return resp, latencies


async def _probed(client: httpx.AsyncClient, work: Callable[[], Awaitable[httpx.Response]]
                  ) -> tuple[httpx.Response, list[float]]:
    latencies: list[float] = []
    result: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:
        async def run() -> None:
            result.append(await work())
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=TIMEOUT) as probe:
            while True:
                start = time.perf_counter()
                assert (await probe.get("/health")).status_code == 200
                latencies.append((time.perf_counter() - start) * 1000)
                await trio.sleep(0.02)
    return result[0], latencies


def p99(values: list[float]) -> float:
    """The nearest-rank 99th percentile (the largest value under 100 samples)."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


async def test_a_token_prompt_longer_than_the_context_is_refused_at_once(
        client: httpx.AsyncClient) -> None:
    body = json.dumps({"prompt": list(range(500_000)), "n_predict": 1})  # 3.9 MB, legal size
    start = time.perf_counter()
    resp, latencies = await health_while(client, lambda: client.post(
        "/completion", content=body, headers={"Content-Type": "application/json"}))
    assert resp.status_code == 400
    assert "context" in resp.json()["error"]["message"]
    assert time.perf_counter() - start < 2
    assert p99(latencies) < 100, latencies


async def test_many_messages_render_in_a_worker(client: httpx.AsyncClient) -> None:
    messages = [{"role": "system", "content": f"rule {i}"} for i in range(60_000)]
    messages.append({"role": "user", "content": "hi"})
    body = json.dumps({"messages": messages})  # 2.7 MB, encoded before the clock starts
    start = time.perf_counter()
    resp, latencies = await health_while(client, lambda: client.post(
        "/apply-template", content=body, headers={"Content-Type": "application/json"}))
    assert resp.status_code == 200, resp.text
    assert "rule 59999" in resp.json()["prompt"]
    assert time.perf_counter() - start < 30  # was 105 s: the system text joined quadratically
    assert p99(latencies) < 100, sorted(latencies)[-5:]


_MANY = [{"role": "system", "content": f"rule {i}"} for i in range(60_000)] + [
    {"role": "user", "content": "hi"}]
# the largest legal body of each route that takes one (under the 4 MiB limit)
LARGEST: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"messages": _MANY, "max_tokens": 1}),
    ("/v1/messages", {"model": "m", "max_tokens": 1, "system": "s", "messages": [
        {"role": "user", "content": f"part {i}"} for i in range(60_000)]}),
    ("/v1/responses", {"input": [{"role": "user", "content": f"part {i}"}
                                 for i in range(60_000)], "max_output_tokens": 1}),
    ("/api/chat", {"model": "m", "messages": _MANY, "stream": False}),
    ("/v1/completions", {"prompt": ["word " * 100] * 6_000, "max_tokens": 1}),
    ("/tokenize", {"content": "word " * 700_000}),
    ("/infer", {"prompt": "word " * 700_000, "tokens": 1}),
    ("/completion", {"prompt": "word " * 700_000, "n_predict": 1}),
    ("/detokenize", {"tokens": [i % 200 for i in range(500_000)]}),
    ("/apply-template", {"messages": _MANY}),
    ("/v1/messages/count_tokens", {"model": "m", "messages": [
        {"role": "user", "content": f"part {i}"} for i in range(60_000)]}),
    ("/api/generate", {"model": "m", "prompt": "word " * 700_000, "stream": False}),
    ("/api/completion", {"prompt": "word " * 700_000, "tokens": 1}),
    ("/stream", {"prompt": "word " * 700_000}),
    ("/grammar", {"schema": {"type": "object", "properties": {
        f"p{i}": {"type": "string"} for i in range(40_000)}}}),
]


@pytest.mark.parametrize(("path", "body"), LARGEST, ids=[p for p, _ in LARGEST])
async def test_the_largest_legal_body_of_each_route_leaves_health_responsive(
        client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body)
    assert len(raw) < 4 * 1024 * 1024
    resp, latencies = await health_while(client, lambda: client.post(
        path, content=raw, headers={"Content-Type": "application/json",
                                    "anthropic-version": "2023-06-01"}))
    assert resp.status_code < 500, resp.text[:300]
    assert p99(latencies) < 100, sorted(latencies)[-5:]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"input": "word " * 700_000}),
    ("/embedding", {"content": "word " * 700_000}),
    ("/v1/embeddings", {"input": ["word " * 100] * 6_000}),
], ids=["one-text", "native", "many-texts"])
async def test_the_largest_embedding_body_leaves_health_responsive(
        path: str, body: dict[str, Any]) -> None:
    """On a server with ``--embedding`` (the routes answer 501 without it). /infill and
    /rerank read their bodies as /completion and /v1/embeddings do; the embedded models have
    neither fill-in-the-middle tokens nor a reranking head to run them for real."""
    raw = json.dumps(body)
    assert len(raw) < 4 * 1024 * 1024
    with running_server("--embedding") as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=TIMEOUT) as c:
            resp, latencies = await health_while(c, lambda: c.post(
                path, content=raw, headers={"Content-Type": "application/json"}))
    assert resp.status_code < 500, resp.text[:300]
    assert p99(latencies) < 100, sorted(latencies)[-5:]


async def test_an_amplifying_template_is_refused_before_it_expands(
        client: httpx.AsyncClient) -> None:
    start = time.perf_counter()
    resp = await client.post("/infer", json={"prompt": "x" * (1 << 20),
                                             "template": "{prompt}" * 64, "tokens": 4})
    assert resp.status_code == 400
    assert "template" in resp.text
    assert time.perf_counter() - start < 1


async def test_a_body_over_the_limit_is_refused_within_a_second(client: httpx.AsyncClient) -> None:
    start = time.perf_counter()
    resp = await client.post("/completion", content=b"x" * (4 * 1024 * 1024 + 1),
                             headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert time.perf_counter() - start < 1


async def test_a_text_prompt_that_cannot_fit_is_refused_untokenized(
        client: httpx.AsyncClient) -> None:
    start = time.perf_counter()
    resp = await client.post("/completion", json={"prompt": "word " * 700_000, "n_predict": 1})
    assert resp.status_code == 400
    assert time.perf_counter() - start < 2


# --- 5: the server's default constraint on every family --------------------------------------
@pytest.mark.parametrize("flag", [("-j", '{"type": "integer"}'),
                                  ("--grammar", 'root ::= "4" | "7"')])
def test_every_family_follows_the_servers_default_constraint(flag: tuple[str, str]) -> None:
    def integer(text: str) -> int:
        value = json.loads(text)
        assert isinstance(value, int), text
        if flag[0] == "--grammar":
            assert value in (4, 7), text
        return value

    with running_server("--parallel", "1", *flag) as srv:
        def post(path: str, body: dict[str, Any]) -> Any:
            r = httpx.post(srv.base_url + path, json=body, timeout=TIMEOUT,
                           headers={"anthropic-version": "2023-06-01"})
            assert r.status_code == 200, (path, r.text)
            return r.json() if "json" in r.headers["content-type"] else r.text

        msgs = [{"role": "user", "content": "How many legs has a cat?"}]
        integer(post("/completion", {"prompt": "Legs of a cat:", "n_predict": 8})["content"])
        integer(post("/v1/completions", {"prompt": "Legs of a cat:", "max_tokens": 8})
                ["choices"][0]["text"])
        integer(post("/v1/chat/completions", {"messages": msgs, "max_tokens": 8})
                ["choices"][0]["message"]["content"])
        integer(post("/v1/messages", {"model": "m", "max_tokens": 8, "messages": msgs})
                ["content"][0]["text"])
        out = post("/v1/responses", {"input": "How many legs has a cat?", "max_output_tokens": 8})
        integer(out["output"][-1]["content"][0]["text"])
        integer(post("/api/generate", {"model": "m", "prompt": "Legs of a cat:", "stream": False,
                                       "options": {"num_predict": 8}})["response"])
        integer(post("/api/chat", {"model": "m", "messages": msgs, "stream": False,
                                   "options": {"num_predict": 8}})["message"]["content"])
        integer(post("/infer", {"prompt": "Legs of a cat:", "tokens": 8})["text"])
        integer(post("/api/completion", {"prompt": "Legs of a cat:", "tokens": 8})["Text"])
        integer(post("/stream", {"prompt": "Legs of a cat:", "num_predict": 8}))
