"""Start-up and shutdown of a real server process: signals, grace period, API keys."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import httpx
import trio

from tests.integration.helpers import TIMEOUT, wait_until
from tests.serverproc import ServerProcess, running_server


async def test_sigterm_ends_running_stream_with_final_event_and_exits_zero() -> None:
    server = ServerProcess(["--parallel", "2", "--shutdown-grace", "1"])
    try:
        server.wait_ready()
        body = {"prompt": "Once upon a time", "n_predict": 5000, "ignore_eos": True, "stream": True}
        events = []
        async with (httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client,
                    client.stream("POST", "/completion", json=body) as resp):
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 3:
                        sent = time.monotonic()
                        server.proc.send_signal(signal.SIGTERM)
        ended = time.monotonic() - sent
        final = events[-1]
        assert final["stop"] is True
        assert final.get("shutdown") is True
        assert final["content"] == ""  # the partials carried the text
        assert all(e["stop"] is False for e in events[:-1])
        assert ended < 1.0 + 2.0  # the grace period, then the final event
        rc = await trio.to_thread.run_sync(server.proc.wait, 15)
        assert rc == 0
    finally:
        server.terminate()


async def test_sigint_on_idle_server_exits_zero_quickly() -> None:
    server = ServerProcess([])
    try:
        server.wait_ready()
        start = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        rc = await trio.to_thread.run_sync(server.proc.wait, 15)
        assert rc == 0
        assert time.monotonic() - start < 5
    finally:
        server.terminate()


async def test_api_keys_guard_everything_but_public_routes() -> None:
    server = ServerProcess(["--api-key", "secret-1", "--api-key", "secret-2"])
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
            assert (await client.get("/health")).status_code == 200
            body = {"prompt": "hi", "n_predict": 1}
            resp = await client.post("/completion", json=body)
            assert resp.status_code == 401
            assert resp.json()["error"] == {"code": 401, "message": "Invalid API Key",
                                            "type": "authentication_error"}
            bad = await client.post("/completion", json=body, headers={"Authorization": "Bearer x"})
            assert bad.status_code == 401
            ok = await client.post("/completion", json=body,
                                   headers={"Authorization": "Bearer secret-2"})
            assert ok.status_code == 200
            ok = await client.post("/completion", json=body, headers={"X-Api-Key": "secret-1"})
            assert ok.status_code == 200
            # refusals with unread bodies must not stall the keep-alive connection
            for _ in range(10):
                refused = await client.post("/completion", json={"prompt": "x " * 500})
                assert refused.status_code == 401
                ok = await client.post("/tokenize", json={"content": "x"},
                                       headers={"X-Api-Key": "secret-1"})
                assert ok.status_code == 200
    finally:
        assert server.terminate() == 0


async def test_timeout_ends_a_request_like_an_abort() -> None:
    server = ServerProcess(["--timeout", "1"])
    try:
        server.wait_ready()
        body = {"prompt": "Once upon a time", "n_predict": 5000, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
            start = time.monotonic()
            out = (await client.post("/completion", json=body)).json()
            assert 0.9 < time.monotonic() - start < 3
            assert out["timeout"] is True
            assert out["stop_type"] == "none"
            assert 0 < out["tokens_predicted"] < 5000
            events = []
            async with client.stream("POST", "/completion", json={**body, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
            assert events[-1]["timeout"] is True

            async def idle() -> bool:
                slots = (await client.get("/slots")).json()
                return not any(s["is_processing"] for s in slots)

            await wait_until(idle, timeout_s=1.0)
    finally:
        assert server.terminate() == 0


async def test_generation_reaching_the_slot_context_is_truncated() -> None:
    server = ServerProcess(["--parallel", "1", "--ctx-size", "256"])
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as client:
            out = (await client.post("/completion", json={
                "prompt": "Count: 1, 2, 3,", "ignore_eos": True, "temperature": 0})).json()
            assert out["truncated"] is True
            assert out["stop_type"] == "limit"
            assert out["tokens_evaluated"] + out["tokens_predicted"] == 256
    finally:
        assert server.terminate() == 0


async def test_a_client_leaving_during_a_long_prompt_frees_the_slot_at_once() -> None:
    """A 2,000-token prompt takes about a second to read in one chunk here; the decode is
    aborted (llama.cpp stops at its next graph node) instead of run to its end. A request
    decoding in the same batches is decoded again and finishes whole."""
    long_prompt = " ".join(f"word{i}" for i in range(700))
    with running_server("--parallel", "2") as srv:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=TIMEOUT) as client:
            result: dict[str, Any] = {}

            async def beside() -> None:
                result["other"] = (await client.post("/completion", json={
                    "prompt": "Once upon a time", "n_predict": 40, "ignore_eos": True})).json()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(beside)
                await trio.sleep(0.2)
                with trio.move_on_after(0.3):
                    await client.post("/completion", json={"prompt": long_prompt,
                                                           "n_predict": 8, "cache_prompt": False})
                left = time.perf_counter()
                while True:
                    slots = (await client.get("/slots")).json()
                    if sum(s["is_processing"] for s in slots) <= 1 and not any(
                            s["n_prompt_tokens"] > 1000 for s in slots if s["is_processing"]):
                        break
                    await trio.sleep(0.005)
                freed_ms = (time.perf_counter() - left) * 1000
            other = result["other"]
    assert freed_ms < 300, freed_ms  # a second without the abort
    assert other["tokens_predicted"] == 40
    assert other["stop_type"] == "limit"
