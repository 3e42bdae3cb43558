"""A bounded soak on loopback: 8 clients send a random mix for 40 s against a fresh server.

Mix: plain, streamed, schema- and grammar-constrained completions, chat (streamed or not),
requests whose clients leave at a random moment (streaming or not), and bad grammars. At the
end it prints /health, the slots' state and the request counters, and the count of
unexpected errors (expected: 0, all slots idle).
Run: ``.venv/bin/python bench/soak.py``.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess  # noqa: E402

SECONDS = 40.0
SCHEMA = {"type": "object", "properties": {
    "a": {"type": "integer", "minimum": 0, "maximum": 99},
    "b": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}},
    "required": ["a", "b"]}
stats = {"ok": 0, "left": 0, "unexpected": 0}


async def one(c: httpx.AsyncClient, rng: random.Random) -> None:
    kind = rng.choice(["plain", "stream", "schema", "grammar", "chat", "leave", "leave-stream",
                       "bad"])
    body: dict[str, object] = {"prompt": rng.choice(["Hello", "Once upon a time", "JSON:"]),
                               "n_predict": rng.randint(0, 60), "seed": rng.randint(0, 99)}
    if kind == "schema":
        body["json_schema"] = SCHEMA
    if kind == "grammar":
        body["grammar"] = 'root ::= [a-z]{1,10} ("," [a-z]{1,10})*'
    if kind in ("plain", "schema", "grammar"):
        assert (await c.post("/completion", json=body)).status_code == 200
    elif kind == "chat":
        r = await c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
            "stream": rng.random() < 0.5})
        assert r.status_code == 200
    elif kind == "stream":
        async with c.stream("POST", "/completion", json={**body, "stream": True}) as r:
            async for _ in r.aiter_lines():
                pass
    elif kind.startswith("leave"):
        with trio.move_on_after(rng.uniform(0.01, 0.5)):
            if kind == "leave":
                await c.post("/completion", json={**body, "n_predict": 500})
            else:
                async with c.stream("POST", "/completion",
                                    json={**body, "n_predict": 500, "stream": True}) as r:
                    async for _ in r.aiter_lines():
                        pass
        stats["left"] += 1
        return
    else:
        assert (await c.post("/completion", json={"prompt": "x", "grammar": "root ::= ("})
                ).status_code == 400
    stats["ok"] += 1


async def worker(base: str, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        while time.monotonic() < deadline:
            try:
                await one(c, rng)
            except (AssertionError, httpx.HTTPError) as exc:
                stats["unexpected"] += 1
                print("unexpected:", repr(exc)[:200])


async def main(base: str) -> None:
    deadline = time.monotonic() + SECONDS
    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(worker, base, i, deadline)
    await trio.sleep(1)
    async with httpx.AsyncClient(base_url=base) as c:
        print("health:", (await c.get("/health")).json())
        print("slots busy:", [s["is_processing"] for s in (await c.get("/slots")).json()])
        metrics = (await c.get("/metrics")).text
        print("\n".join(line for line in metrics.splitlines() if line.startswith("sluice:")))
    print(stats)


if __name__ == "__main__":
    server = ServerProcess(["--parallel", "4", "--metrics"])
    try:
        server.wait_ready()
        trio.run(main, server.base_url)
    finally:
        print("server exit status:", server.terminate())
