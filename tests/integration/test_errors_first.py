"""Errors knowable before the first token are plain HTTP errors on every family, streaming or not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ServerProcess, models_dir, running_server

# Passes Sluice's GBNF parser, refused by llama.cpp's ("expecting preceding item to */+/?/{"):
# the refusal only shows when the sampler is built, which now happens before the response.
LLAMA_REFUSES = 'root ::= ""*'


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--models-dir", str(models_dir("models-errors", "only.gguf")),
                        "--model", "only.gguf",
                        "--parallel", "2") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


async def _status(client: httpx.AsyncClient, route: str, body: dict[str, Any],
                  **kwargs: Any) -> tuple[int, httpx.Headers, bytes]:
    async with client.stream("POST", route, json=body, **kwargs) as resp:
        return resp.status_code, resp.headers, await resp.aread()


GRAMMAR_ROUTES = [
    ("/completion", {"prompt": "Hi", "n_predict": 4, "grammar": LLAMA_REFUSES}),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "grammar": LLAMA_REFUSES}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                              "grammar": LLAMA_REFUSES}),
]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("route", "body"), GRAMMAR_ROUTES)
async def test_a_grammar_llama_cpp_refuses_is_a_400_before_any_stream(
        client: httpx.AsyncClient, route: str, body: dict[str, Any], stream: bool) -> None:
    status, headers, raw = await _status(client, route, {**body, "stream": stream})
    assert status == 400, raw
    assert headers["content-type"].startswith("application/json")
    error = httpx.Response(400, content=raw).json()["error"]
    assert error["param"] == "grammar"
    assert "llama.cpp refused" in error["message"]
    # the server is fine afterwards
    ok = await client.post("/completion", json={"prompt": "Hi", "n_predict": 2})
    assert ok.status_code == 200


STREAM_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/completion", {"json": {"prompt": "Hi", "stream": True, "n_predict": 3}}),
    ("/v1/completions", {"json": {"prompt": "Hi", "stream": True, "max_tokens": 3}}),
    ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "Hi"}],
                                       "stream": True, "max_tokens": 3}}),
    ("/infer", {"json": {"prompt": "Hi", "stream": True, "tokens": 3}}),
    ("/api/completion", {"json": {"prompt": "Hi", "tokens": 3}}),
    ("/stream", {"json": {"prompt": "Hi", "num_predict": 3}}),
    ("/predict", {"data": {"prompt": "Hi", "max_tokens": "3"}}),
]


async def test_after_an_unload_every_family_loads_the_model_again(
        client: httpx.AsyncClient) -> None:
    """goinfer's unload frees the model; the next request of any family loads it on demand
    (the registry's rule) and is served, streaming or not."""
    try:
        for route, kwargs in STREAM_ROUTES:
            assert (await client.get("/model/unload")).status_code == 204
            assert (await client.get("/model/state")).json()["isModelLoaded"] is False
            async with client.stream("POST", route, **kwargs) as resp:
                raw = await resp.aread()
                assert resp.status_code == 200, (route, raw)
                assert b"error" not in raw, (route, raw)
            assert (await client.get("/model/state")).json()["isModelLoaded"] is True
    finally:
        assert (await client.post("/model/load", json={"name": "only"})).status_code == 204
