"""Cancellation: how long after a client leaves its request stops holding the engine, in each
phase a request can be in, beside the time of one decode step.

One server (default model, ``--parallel 1 --ctx-size 4096 --metrics``). Per phase, ``--tries``
times: the client leaves, and ``/slots`` (or ``/metrics`` for a queued request) is polled every
2 ms until the request is gone. Phases:

* ``queued``: the slot is busy with another request; ours waits, streaming pings, and leaves;
  gone when ``llamacpp:requests_deferred`` is 0;
* ``prompt``: a 2,000-token prompt is being read (one ``--batch-size`` chunk takes about a
  second here) when the client leaves (non-streamed, 0.3 s in);
* ``decode-stream``: a streamed generation, after its fifth event;
* ``decode-plain``: a non-streamed generation, 0.4 s in;
* ``grammar-worker``: a streamed generation whose every step goes to a grammar worker (a
  grammar with a token reference turns the narrowing filter off, and it admits only ``q``,
  which the model never picks first, so each step is a full-vocabulary pass off the engine
  thread), after its fifth event: the client leaves while a step is on the worker.

``--nginx`` runs the same phases through nginx (``deploy/cluster.py``, one replica), the
client talking to nginx and the probe to the replica: nginx notices the client's close and
closes its connection to the replica.

Not measured: a request leaving while its grammar is prepared on a worker (no slot is held
then; ``tests/unit/test_cancel_phases.py`` checks it never reaches the engine).

Prints median and max per phase in ms, and the decode step (ms per generated token, from a
plain run's ``timings``). Run on a quiet machine (check ``top``)::

    .venv/bin/python bench/cancel.py [--tries 20] [--nginx] [--phase NAME ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.serverproc import running_server

ENDLESS = {"prompt": "Once upon a time", "n_predict": -1, "ignore_eos": True,
           "cache_prompt": False}
LONG = " ".join(f"word{i}" for i in range(700))  # ~2,000 tokens


async def slot_free(probe: httpx.AsyncClient) -> None:
    while any(s["is_processing"] for s in (await probe.get("/slots")).json()):  # noqa: ASYNC110
        await trio.sleep(0.002)


async def queue_empty(probe: httpx.AsyncClient) -> None:
    while True:
        text = (await probe.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("llamacpp:requests_deferred"))
        if float(line.split()[-1]) == 0:
            return
        await trio.sleep(0.002)


async def read_events(c: httpx.AsyncClient, body: dict[str, object], n: int) -> None:
    async with c.stream("POST", "/completion", json={**body, "stream": True}) as resp:
        seen = 0
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == n:
                    return


async def phase(base: str, probe_base: str, tries: int,
                leave: Callable[[httpx.AsyncClient], Awaitable[None]],
                gone: Callable[[httpx.AsyncClient], Awaitable[None]]) -> list[float]:
    waits = []
    async with httpx.AsyncClient(base_url=probe_base, timeout=120) as probe:
        for _ in range(tries):
            async with httpx.AsyncClient(base_url=base, timeout=120) as c:
                await leave(c)
            left = time.perf_counter()
            await gone(probe)
            waits.append((time.perf_counter() - left) * 1000)
            await slot_free(probe)
            await trio.sleep(0.1)
    return waits


async def main(base: str, probe_base: str, tries: int, only: list[str]) -> None:
    async with httpx.AsyncClient(base_url=probe_base, timeout=120) as c:
        timed = (await c.post("/completion", json={"prompt": "Once upon a time",
                                                  "n_predict": 64, "ignore_eos": True})).json()
        q = (await c.post("/tokenize", json={"content": "q"})).json()["tokens"][0]
        slow = {**ENDLESS, "grammar": f'root ::= ("q" | <[{q}]>)+'}
        timed_slow = (await c.post("/completion", json={**slow, "n_predict": 32})).json()
    step_ms = timed["timings"]["predicted_per_token_ms"]
    slow_ms = timed_slow["timings"]["predicted_per_token_ms"]

    async def prompt(c: httpx.AsyncClient) -> None:
        with trio.move_on_after(0.3):
            await c.post("/completion", json={**ENDLESS, "prompt": LONG})

    async def plain(c: httpx.AsyncClient) -> None:
        with trio.move_on_after(0.4):
            await c.post("/completion", json=ENDLESS)

    phases: dict[str, tuple[Callable[[httpx.AsyncClient], Awaitable[None]],
                            Callable[[httpx.AsyncClient], Awaitable[None]]]] = {
        "prompt": (prompt, slot_free),
        "decode-stream": (lambda c: read_events(c, ENDLESS, 5), slot_free),
        "decode-plain": (plain, slot_free),
        "grammar-worker": (lambda c: read_events(c, slow, 5), slot_free),
    }
    print(f"decode step: {step_ms:.1f} ms per token ({slow_ms:.1f} ms with the grammar of "
          f"grammar-worker); {tries} tries per phase")
    for name, (leave, gone) in phases.items():
        if only and name not in only:
            continue
        waits = await phase(base, probe_base, tries, leave, gone)
        print(f"{name:14} leave -> free: median {statistics.median(waits):6.1f} ms, "
              f"max {max(waits):6.1f} ms", flush=True)
    if only and "queued" not in only:
        return
    if only and "queued" not in only:
        return
    waits = []
    async with httpx.AsyncClient(base_url=probe_base, timeout=120) as probe:
        for _ in range(tries):
            async with httpx.AsyncClient(base_url=base, timeout=120) as c, \
                    trio.open_nursery() as nursery:
                async def block() -> None:
                    async with httpx.AsyncClient(base_url=base, timeout=120) as b:
                        await b.post("/completion", json={**ENDLESS, "n_predict": 2000})
                nursery.start_soon(block)
                await trio.sleep(0.3)
                with trio.move_on_after(0.3):
                    await read_events(c, ENDLESS, 1000)
                left = time.perf_counter()
                await queue_empty(probe)
                waits.append((time.perf_counter() - left) * 1000)
                nursery.cancel_scope.cancel()
            await slot_free(probe)
    print(f"{'queued':14} leave -> out of the queue: median {statistics.median(waits):6.1f} ms, "
          f"max {max(waits):6.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--nginx", action="store_true", help="the client talks to nginx")
    parser.add_argument("--phase", action="append", default=[],
                        help="only this phase (repeatable): prompt, decode-stream, decode-plain, "
                        "grammar-worker, queued")
    args = parser.parse_args()
    flags = ["--parallel", "1", "--ctx-size", "4096", "--metrics"]
    if args.nginx:
        from deploy.cluster import Cluster
        from tests.serverproc import free_port
        with Cluster([free_port()], free_port(), flags) as cluster:
            print("through nginx")
            trio.run(main, cluster.url, cluster.replica_url(0), args.tries, args.phase)
    else:
        with running_server(*flags) as srv:
            trio.run(main, srv.base_url, srv.base_url, args.tries, args.phase)
