"""Hostile inputs and operator actions against a real server: 4xx naming the field, never a crash."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.integration.helpers import TIMEOUT, wait_until
from tests.serverproc import ServerProcess, models_dir, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--models-dir", str(models_dir("models-hardening", "only.gguf")),
                        "--model", "only.gguf", "--embedding",
                        "--parallel", "2") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("/completion", b'{"prompt": "x", "temperature": NaN}', "NaN"),
    ("/completion", b'{"prompt": "x", "temperature": Infinity}', "Infinity"),
    ("/completion", b'{"prompt": "x", "top_p": 1e400}', "out of range"),
    ("/completion", b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "malformed JSON"),
    ("/completion", b"[" * 100_000, "nested deeper"),
    ("/completion", b'{"prompt": "x", "json_schema": ' + b'{"items": ' * 80 + b"{}"
     + b"}" * 80 + b"}", "nested deeper"),
    ("/completion", b'{"prompt": "x", "seed": 4294967295}', "seed"),
    ("/completion", b'{"prompt": "x", "repeat_last_n": 2000000000}', "repeat_last_n"),
    ("/completion", b'{"prompt": "x", "top_k": 99999999999}', "top_k"),
    ("/completion", b'{"prompt": "x", "n_predict": 99999999999}', "n_predict"),
    ("/completion", b'{"prompt": "x", "stop": ["' + b"s" * 2000 + b'"]}', "stop"),
    ("/completion", json.dumps({"prompt": "x", "grammar": "root ::= " + "(" * 300 + '"a"'
                                + ")" * 300}).encode(), "nested too deeply"),
    ("/completion", json.dumps({"prompt": "x", "grammar": "root ::= <[1(]>"}).encode(),
     "token id"),
    ("/completion", json.dumps({"prompt": "x", "json_schema": {"$schema": ["x"]}}).encode(),
     "$schema"),
    ("/completion", json.dumps({"prompt": "x", "grammar": "root ::= " + " | ".join(
        f'"w{i}"' for i in range(30_000))}).encode(), "over the limit"),
    ("/completion", json.dumps({"prompt": "x", "json_schema": {
        "type": "string", "not": {"pattern": "(?=a)b"}}}).encode(), "json_schema"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
                             b'"temperature": NaN}', "NaN"),
    ("/infer", b'{"prompt": "x", "seed": 4294967295}', "seed"),
    ("/completion", json.dumps({"prompt": "x", "grammar": 'root ::= (("a"|"b"){0,40}){0,40}'}
                               ).encode(), "ambiguous"),
]


@pytest.mark.parametrize(("route", "raw", "needle"), BAD_BODIES)
async def test_bad_inputs_are_400s_in_the_error_shape(client: httpx.AsyncClient, route: str,
                                                      raw: bytes, needle: str) -> None:
    resp = await client.post(route, content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == 400
    assert needle in error["message"]


async def test_odd_but_valid_inputs_are_served(client: httpx.AsyncClient) -> None:
    # a non-ASCII digit is text to bias, not a token id; the converter's lazy quantifier is
    # the same language as the greedy one
    for body in ({"prompt": "x", "n_predict": 2, "logit_bias": {"\u00b2": 1}},
                 {"prompt": "x", "n_predict": 2, "seed": 4294967294},
                 {"prompt": "x", "n_predict": 2, "repeat_last_n": -1, "repeat_penalty": 1.1},
                 # JSON Schema integers may be written 2.0: they reach llama.cpp as ints
                 {"prompt": [2.0, 651.0], "n_predict": 2.0}):
        resp = await client.post("/completion", json=body)
        assert resp.status_code == 200, (body, resp.text)
    assert (await client.post("/detokenize", json={"tokens": [651.0]})).status_code == 200
    assert (await client.get("/health")).status_code == 200  # the engine thread is alive
    out = (await client.post("/completion", json={"prompt": "x", "n_predict": 3, "seed": 5,
                                                  "temperature": 1})).json()
    again = (await client.post("/completion", json={"prompt": "x", "n_predict": 3, "seed": 5,
                                                    "temperature": 1})).json()
    assert out["content"] == again["content"]
    assert json.loads(json.dumps(out)) == out  # valid JSON: no NaN anywhere


async def test_unload_while_tokenize_and_embedding_run_does_not_crash(
        server: ServerProcess, client: httpx.AsyncClient) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 60_000  # ~2.7 MB
    results: dict[str, int] = {}

    async def tokenize() -> None:
        resp = await client.post("/tokenize", json={"content": text})
        results["tokenize"] = resp.status_code

    async def embed() -> None:
        for _ in range(5):
            resp = await client.post("/embedding", json={"content": "hello " * 300})
            results.setdefault("embedding", resp.status_code)

    async def unload() -> None:
        await trio.sleep(0.1)
        resp = await client.post("/model/unload")
        results["unload"] = resp.status_code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tokenize)
        nursery.start_soon(embed)
        nursery.start_soon(unload)
    assert server.proc.poll() is None, server.log()  # alive: no segmentation fault
    assert results["unload"] == 204
    assert results["tokenize"] in (200, 503)
    assert results["embedding"] in (200, 503)
    # unloaded, the server stays healthy: the next request (an embedding still running
    # above, say) loads the model again on demand
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/model/load", json={"name": "only"})).status_code == 204
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/tokenize", json={"content": "hi"})).status_code == 200


async def test_unload_without_a_models_directory_is_refused() -> None:
    with running_server("--parallel", "1") as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=TIMEOUT) as c:
            for method in ("GET", "POST"):
                resp = await c.request(method, "/model/unload")
                assert resp.status_code == 501
                assert "--models-dir" in resp.json()["error"]["message"]
            assert (await c.post("/completion", json={"prompt": "x", "n_predict": 1})
                    ).status_code == 200


async def test_admission_limit_and_websocket_cap() -> None:
    with running_server("--parallel", "1", "--max-queue", "1", "--max-ws", "1") as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=TIMEOUT) as c:
            long = {"prompt": "Once upon a time", "n_predict": 5000, "ignore_eos": True,
                    "stream": True}
            async with c.stream("POST", "/completion", json=long) as first, \
                    c.stream("POST", "/completion", json=long) as second:
                assert (first.status_code, second.status_code) == (200, 200)
                refused = await c.post("/completion", json={"prompt": "x", "n_predict": 1})
                assert refused.status_code == 503
                assert refused.headers["Retry-After"] == "1"
                assert "--max-queue" in refused.json()["error"]["message"]
                plain = await c.post("/predict", data={"prompt": "x"})
                assert plain.status_code == 503
                assert plain.headers["Retry-After"] == "1"
            ws_url = srv.base_url.replace("http", "ws") + "/ws"
            handshake = {"Connection": "Upgrade", "Upgrade": "websocket",
                         "Sec-WebSocket-Version": "13",
                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
            async with open_websocket_url(ws_url) as first_ws:
                await trio.sleep(0.2)
                refused_ws = await c.get("/ws", headers=handshake)
                assert refused_ws.status_code == 403  # a handshake refused before accept
                assert not first_ws.closed
            await trio.sleep(0.2)
            # the first subscriber left (its subscription went with it): room again
            async with open_websocket_url(ws_url) as again:
                assert not again.closed
            ok = await c.post("/completion", json={"prompt": "x", "n_predict": 1})
            assert ok.status_code == 200


async def test_an_error_before_the_body_is_read_keeps_the_connection_usable() -> None:
    with running_server("--parallel", "1") as srv:  # no --embedding: /embedding is 501
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=10) as c:
            for _ in range(5):
                refused = await c.post("/embedding", json={"content": "x " * 20_000})
                assert refused.status_code == 501
            ok = await c.post("/tokenize", json={"content": "hi"})  # same keep-alive connection
            assert ok.status_code == 200


async def test_a_client_that_never_reads_loses_its_slot_after_the_send_timeout() -> None:
    with running_server("--parallel", "1", "--send-timeout", "2") as srv:
        body = json.dumps({"prompt": "Once upon a time", "n_predict": 100000, "ignore_eos": True,
                           "n_probs": 20, "stream": True}).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a tiny window, never read
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        try:
            async with httpx.AsyncClient(base_url=srv.base_url, timeout=TIMEOUT) as c:
                async def busy() -> bool:
                    return bool((await c.get("/slots")).json()[0]["is_processing"])

                async def idle() -> bool:
                    return not await busy()

                await wait_until(busy, timeout_s=10)
                took = await wait_until(idle, timeout_s=30)
                assert took < 25
                ok = await c.post("/completion", json={"prompt": "x", "n_predict": 2})
                assert ok.status_code == 200
        finally:
            sock.close()


async def test_stop_regexes_run_on_re2(client: httpx.AsyncClient) -> None:
    refused = await client.post("/predict", data={"prompt": "x", "stopRegex": "(?=a)b"})
    assert refused.status_code == 400
    assert "stopRegex" in refused.text
    # a pattern that makes a backtracking engine run for ages is harmless here
    ok = await client.post("/predict", data={"prompt": "1, 2, 3,", "max_tokens": "12",
                                             "stopRegex": "(a+)+$"})
    assert ok.status_code == 200


async def test_a_schema_whose_pattern_stacks_quantifiers_is_served(
        client: httpx.AsyncClient) -> None:
    resp = await client.post("/completion", json={
        "prompt": "base64:", "n_predict": 12, "temperature": 0,
        "json_schema": {"type": "string", "pattern": "^(?:[A-Za-z0-9+/]{4})*$"}})
    assert resp.status_code == 200, resp.text
