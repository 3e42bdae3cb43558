"""Client helpers for integration tests (httpx under Trio)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

TIMEOUT = httpx.Timeout(60.0)


async def stream_events(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                        **kwargs: Any) -> list[dict[str, Any]]:
    """POST a streaming completion and return every data event."""
    events = []
    async with client.stream("POST", url, json={**body, "stream": True}, **kwargs) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


async def slots(client: httpx.AsyncClient, base: str) -> list[dict[str, Any]]:
    resp = await client.get(base + "/slots")
    assert resp.status_code == 200
    return resp.json()  # type: ignore[no-any-return]


async def wait_until(predicate: Any, *, timeout_s: float, interval_s: float = 0.02) -> float:
    """Poll ``predicate`` (an async callable) until true; returns the seconds it took."""
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not await predicate():  # noqa: ASYNC110 - polls another process over HTTP
            await trio.sleep(interval_s)
    return trio.current_time() - start


def metric_value(text: str, name: str, model: str | None = None) -> float:
    """A series of ``/metrics`` text summed over its ``model`` labels (or for one model)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        base, _, labels = series.partition("{")
        if base != name or (model is not None and f'model="{model}"' not in labels):
            continue
        total += float(value)
        seen = True
    if not seen:
        raise AssertionError(f"{name} not in /metrics")
    return total
