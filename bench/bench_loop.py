"""How responsive the server stays while one client submits a huge grammar.

Starts a server, opens a long-running stream, then posts a completion whose
grammar has N literal alternatives (default 60,000: llama.cpp needs seconds to
build it). Meanwhile it polls /health and times the gaps between the stream's
events. Prints the worst /health latency and the worst stream gap, before and
while the grammar is being prepared.

    .venv/bin/python bench/bench_loop.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.serverproc import running_server


async def main(n_alternatives: int) -> None:
    grammar = "root ::= " + " | ".join(f'"w{i}"' for i in range(n_alternatives))
    with running_server("--parallel", "2") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as client:
            gaps: list[float] = []
            health: list[tuple[float, float]] = []  # (sent at, latency)
            window: list[float] = []

            async def stream() -> None:
                body = {"prompt": "Once upon a time", "n_predict": 100000, "ignore_eos": True,
                        "stream": True}
                async with client.stream("POST", "/completion", json=body) as resp:
                    last = time.monotonic()
                    async for line in resp.aiter_lines():
                        if line.startswith("data: "):
                            now = time.monotonic()
                            gaps.append(now - last)
                            last = now

            async def poll() -> None:
                while True:
                    sent = time.monotonic()
                    resp = await client.get("/health")
                    assert resp.status_code == 200
                    health.append((sent, time.monotonic() - sent))
                    await trio.sleep(0.02)

            async def big() -> None:
                await trio.sleep(2.0)
                window.append(time.monotonic())
                resp = await client.post("/completion", json={"prompt": "x", "n_predict": 1,
                                                              "grammar": grammar})
                window.append(time.monotonic())
                print(f"grammar request: status {resp.status_code}, "
                      f"{window[1] - window[0]:.1f} s")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                nursery.start_soon(poll)
                await big()
                await trio.sleep(1.0)
                nursery.cancel_scope.cancel()
    start, end = window
    during = [lat for sent, lat in health if start <= sent <= end]
    before = [lat for sent, lat in health if sent < start]
    print(f"/health before: median {statistics.median(before) * 1000:.1f} ms, "
          f"max {max(before) * 1000:.1f} ms ({len(before)} polls)")
    print(f"/health while the {n_alternatives}-alternative grammar is prepared: median "
          f"{statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms "
          f"({len(during)} polls)")
    print(f"stream: largest gap between events {max(gaps[5:]) * 1000:.1f} ms over {len(gaps)} events")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 60_000)
