"""Chaos on loopback: what misbehaving clients and operators do to a real server. Prints figures.

Five scenes, each against a fresh server with the default model:

1. storm: 100 clients open streams (4 slots, the rest queued), then all leave at once;
   how long until every slot is idle and nothing waits.
2. slow readers: 50 clients stream and then stop reading (tiny socket buffers); a normal
   client's time to first token and tokens/s meanwhile, and how long until their slots
   are freed (``--send-timeout 5``).
3. SIGTERM under load: 8 streams running, SIGTERM; the exit status and whether every
   stream ended with its final event.
4. hostile soak (``--soak-s``, default 600): 8 clients mixing normal, streamed, abandoned,
   malformed and hostile requests (NaN, deep bodies, huge and ambiguous grammars, bad
   patterns, slow readers, unload/load); requests served, 5xx count, RSS at start and end.
5. surface: the classes of hostile request found on the newer routes, one line each: a schema
   only the converter resolves (streamed, n_cmpl 2), /ws without the key or from a foreign
   Origin, a 500,000-id prompt and 60,000 messages (time to answer and the slowest /health
   meanwhile), an amplifying /infer template, a slot file of another model.

    .venv/bin/python bench/chaos.py [--soak-s 600] [--only storm,slow,sigterm,surface,soak]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess, models_dir  # noqa: E402

LONG = {"prompt": "Once upon a time", "n_predict": 100000, "ignore_eos": True, "stream": True}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(*args: str) -> ServerProcess:
    server = ServerProcess(["--metrics", *args])
    server.wait_ready()
    return server


async def all_idle(c: httpx.AsyncClient) -> bool:
    slots = (await c.get("/slots")).json()
    metrics = (await c.get("/metrics")).text
    deferred = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("llamacpp:requests_deferred "))
    return not any(s["is_processing"] for s in slots) and deferred == 0


async def wait_idle(c: httpx.AsyncClient, timeout_s: float) -> float:
    start_t = time.monotonic()
    while time.monotonic() - start_t < timeout_s:
        if await all_idle(c):
            return time.monotonic() - start_t
        await trio.sleep(0.01)
    return float("inf")


# --- 1. disconnect storm -------------------------------------------------------------------------
async def storm() -> None:
    server = start("--parallel", "4", "--max-queue", "128")
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as c:
            started = trio.Event()
            opened = 0

            async def client(cancel: trio.CancelScope) -> None:
                nonlocal opened
                with cancel:
                    async with c.stream("POST", "/completion", json=LONG) as resp:
                        opened += 1
                        if opened == 100:
                            started.set()
                        async for _ in resp.aiter_bytes():
                            pass

            scopes = [trio.CancelScope() for _ in range(100)]
            async with trio.open_nursery() as nursery:
                for scope in scopes:
                    nursery.start_soon(client, scope)
                with trio.fail_after(60):
                    await started.wait()
                await trio.sleep(2.0)  # the 4 slots are generating, 96 requests wait
                t0 = time.monotonic()
                for scope in scopes:
                    scope.cancel()
            await wait_idle(c, 30)
            took = time.monotonic() - t0
            print(f"storm: 100 streams (4 slots + 96 queued) left at once; all slots idle and "
                  f"queue empty after {took * 1000:.0f} ms")
            ok = await c.post("/completion", json={"prompt": "x", "n_predict": 4})
            print(f"storm: next request {ok.status_code}")
    finally:
        print(f"storm: server exit status {server.terminate()}")


# --- 2. slow readers -----------------------------------------------------------------------------
def _slow_socket(port: int) -> socket.socket:
    body = json.dumps({**LONG, "n_probs": 10}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    sock.recv(512)  # take the headers, then never read again
    return sock


async def slow() -> None:
    server = start("--parallel", "4", "--max-queue", "128", "--send-timeout", "5")
    socks: list[socket.socket] = []
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as c:
            t0 = time.monotonic()
            for _ in range(50):
                socks.append(await trio.to_thread.run_sync(_slow_socket, server.port))
            opened = time.monotonic() - t0
            sent = time.monotonic()
            first = None
            n = 0
            async with c.stream("POST", "/completion",
                                json={"prompt": "Hello", "n_predict": 64, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        first = first or time.monotonic()
                        n += 1
            done = time.monotonic()
            print(f"slow: 50 clients that stop reading opened in {opened:.1f} s; a normal "
                  f"64-token stream meanwhile: first token after {(first or done) - sent:.1f} s, "
                  f"{n / (done - (first or done) + 1e-9):.1f} events/s after it")
            took = await wait_idle(c, 120)
            print(f"slow: every slot idle {took:.1f} s after that stream ended "
                  "(--send-timeout 5)")
    finally:
        for s in socks:
            s.close()
        print(f"slow: server exit status {server.terminate()}")


# --- 3. SIGTERM under load -----------------------------------------------------------------------
async def sigterm() -> None:
    server = start("--parallel", "4", "--shutdown-grace", "1")
    finals: list[bool] = []
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
            async def client() -> None:
                last: dict[str, Any] = {}
                async with c.stream("POST", "/completion", json=LONG) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: "):
                            last = json.loads(line[6:])
                finals.append(bool(last.get("stop")) and bool(last.get("shutdown")))

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(client)
                await trio.sleep(3.0)
                t0 = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
            rc = await trio.to_thread.run_sync(server.proc.wait, 30)
            print(f"sigterm: 8 streams (4 running, 4 queued); exit status {rc} after "
                  f"{time.monotonic() - t0:.1f} s; streams ending with a final event marked "
                  f"shutdown: {sum(finals)}/{len(finals)}")
    finally:
        server.terminate()


# --- 5. the newer surface: each class of hostile request, against one server ----------------------
async def _health_during(c: httpx.AsyncClient, work: Any) -> tuple[Any, float, float]:
    """(work's result, its seconds, the slowest /health answer meanwhile in ms)."""
    worst = 0.0
    out: list[Any] = []
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        async def run() -> None:
            out.append(await work())
            nursery.cancel_scope.cancel()
        nursery.start_soon(run)
        while True:
            s = time.monotonic()
            await c.get("/health")
            worst = max(worst, (time.monotonic() - s) * 1000)
            await trio.sleep(0.02)
    return out[0], time.monotonic() - t0, worst


async def surface() -> None:
    from trio_websocket import ConnectionClosed, open_websocket_url

    server = start("--parallel", "2", "--api-key", "k", "--slot-save-path",
                   str(ROOT / "test-artifacts" / "chaos-slots"))
    auth = {"Authorization": "Bearer k"}
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300, headers=auth) as c, \
                httpx.AsyncClient(base_url=server.base_url, timeout=300, headers=auth) as probe:
            anchor = {"$ref": "#n", "$defs": {"n": {"id": "#n", "const": 1}}}
            r = await c.post("/completion", json={"prompt": "x", "json_schema": anchor,
                                                  "stream": True, "n_cmpl": 2})
            alive = (await c.get("/health")).status_code
            print(f"surface: a schema only the converter resolves, streamed with n_cmpl 2: "
                  f"{r.status_code}; /health afterwards {alive}")
            ws = server.base_url.replace("http://", "ws://") + "/ws"
            codes = []
            for url, headers in ((ws, []), (ws + "?api_key=k", [("Origin", "http://evil.example")])):
                async with open_websocket_url(url, extra_headers=headers) as conn:
                    try:
                        await conn.get_message()
                    except ConnectionClosed as exc:
                        codes.append(exc.reason.code)
            print(f"surface: /ws without the key, and with it from a foreign Origin: close codes "
                  f"{codes}")
            ids = json.dumps({"prompt": list(range(500_000)), "n_predict": 1})
            res, took, worst = await _health_during(probe, lambda: c.post(
                "/completion", content=ids, headers={"Content-Type": "application/json"}))
            print(f"surface: a 3.9 MB prompt of 500,000 token ids: {res.status_code} after "
                  f"{took:.2f} s; slowest /health meanwhile {worst:.0f} ms")
            msgs = [{"role": "system", "content": f"rule {i}"} for i in range(60_000)]
            res, took, worst = await _health_during(probe, lambda: c.post(
                "/apply-template", json={"messages": [*msgs, {"role": "user", "content": "hi"}]}))
            print(f"surface: /apply-template with 60,000 system messages: {res.status_code} after "
                  f"{took:.2f} s; slowest /health meanwhile {worst:.0f} ms")
            res, took, worst = await _health_during(probe, lambda: c.post("/infer", json={
                "prompt": "x" * (1 << 20), "template": "{prompt}" * 64, "tokens": 4}))
            print(f"surface: /infer with a 1 MiB prompt and {{prompt}} 64 times in its template: "
                  f"{res.status_code} after {took:.2f} s; slowest /health meanwhile {worst:.0f} ms")
            await c.post("/completion", json={"prompt": "state " * 20, "n_predict": 1,
                                              "id_slot": 0})
            await c.post("/slots/0?action=save", json={"filename": "s.bin"})
            meta = ROOT / "test-artifacts" / "chaos-slots" / "s.bin.meta.json"
            meta.write_text(json.dumps({"model": "0" * 64, "lora": []}))
            r = await c.post("/slots/0?action=restore", json={"filename": "s.bin"})
            print(f"surface: restoring a slot file another model computed: {r.status_code}")
            # stop strings: 16 of 1,000 characters each cost no more per token than none
            rates = []
            for stops in ([], ["never " * 166 + f"{i}" for i in range(16)]):
                out = (await c.post("/completion", json={
                    "prompt": "Once upon a time", "n_predict": 200, "ignore_eos": True,
                    "temperature": 0, "stop": stops})).json()
                rates.append(out["timings"]["predicted_per_second"])
            print(f"surface: 200 tokens with 16 stop strings of 1,000 characters: "
                  f"{rates[1]:.1f} tok/s, without stops {rates[0]:.1f} tok/s")
            # Ollama keep_alive 0 on a busy model: the running request is not stalled
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                async def busy() -> None:
                    await c.post("/completion", json={"prompt": "x", "n_predict": 64,
                                                      "ignore_eos": True})
                nursery.start_soon(busy)
                await trio.sleep(0.2)
                for _ in range(3):
                    await c.post("/api/generate", json={"model": "default", "prompt": "",
                                                        "keep_alive": 0})
            print(f"surface: three Ollama keep_alive 0 calls beside a 64-token request: all done "
                  f"after {time.perf_counter() - started:.1f} s")
    finally:
        print(f"surface: server exit status {server.terminate()}")
    # a server default on every family: -j integer, through each family's route
    server = start("-j", '{"type": "integer"}')
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as c:
            chat = [{"role": "user", "content": "How many legs has a cat?"}]
            replies = {
                "native": (await c.post("/completion", json={
                    "prompt": "Legs of a cat:", "n_predict": 8})).json()["content"],
                "openai": (await c.post("/v1/chat/completions", json={
                    "messages": chat, "max_tokens": 8})).json()["choices"][0]["message"]["content"],
                "anthropic": (await c.post("/v1/messages", headers={
                    "anthropic-version": "2023-06-01"}, json={
                    "model": "m", "max_tokens": 8, "messages": chat})).json()["content"][0]["text"],
                "responses": (await c.post("/v1/responses", json={
                    "input": "How many legs has a cat?", "max_output_tokens": 16})).json()[
                    "output"][0]["content"][0]["text"],
                "ollama": (await c.post("/api/generate", json={
                    "model": "m", "prompt": "Legs of a cat:", "stream": False,
                    "options": {"num_predict": 8}})).json()["response"],
                "goinfer": (await c.post("/infer", json={
                    "prompt": "Legs of a cat:", "tokens": 8})).json()["text"],
            }
            ints = {name: text.strip().lstrip("-").isdigit() for name, text in replies.items()}
            print(f"surface: -j integer, every family answers an integer: {ints}")
    finally:
        print(f"surface: server exit status {server.terminate()}")


# --- 4. hostile soak -----------------------------------------------------------------------------
HOSTILE: list[tuple[str, bytes]] = [
    ("/completion", b'{"prompt": "x", "temperature": NaN}'),
    ("/completion", b"[" * 50_000),
    ("/completion", json.dumps({"prompt": "x", "grammar": "root ::= " + " | ".join(
        f'"w{i}"' for i in range(20_000))}).encode()),
    ("/completion", json.dumps({"prompt": "x", "grammar":
                                'root ::= (("a"|"b"){0,40}){0,40}'}).encode()),
    ("/completion", json.dumps({"prompt": "x", "json_schema": {
        "type": "string", "not": {"pattern": "^(a|a)*$"}}, "n_predict": 8}).encode()),
    ("/completion", b'{"prompt": "x", "repeat_last_n": 2000000000}'),
    ("/completion", b'{"prompt": [1e3, 2.5]}'),
    ("/v1/chat/completions", b'{"messages": "hi"}'),
    ("/tokenize", b'{"content": 5}'),
    # the newer surface (scene 5 measures each)
    ("/completion", json.dumps({"prompt": "x", "stream": True, "n_cmpl": 2, "json_schema": {
        "$ref": "#n", "$defs": {"n": {"id": "#n", "const": 1}}}}).encode()),
    ("/completion", json.dumps({"prompt": list(range(300_000))}).encode()),
    ("/infer", json.dumps({"prompt": "x" * 100_000, "template": "{prompt}" * 64}).encode()),
]


async def soak(seconds: float) -> None:
    server = start("--models-dir", str(models_dir("models-chaos", "only.gguf")),
                   "--model", "only.gguf", "--parallel", "4",
                   "--embedding", "--send-timeout", "5", "--timeout", "20")
    stats = {"requests": 0, "2xx": 0, "4xx": 0, "503": 0, "5xx": 0, "left": 0, "errors": 0}
    rss_start = rss_mib(server.proc.pid)
    deadline = time.monotonic() + seconds

    async def one(c: httpx.AsyncClient, rng: random.Random) -> None:
        kind = rng.choice(["plain", "stream", "schema", "chat", "leave", "hostile", "hostile",
                           "tokenize", "embed", "slow", "reload"])
        status: int | None = None
        if kind == "plain":
            status = (await c.post("/completion", json={
                "prompt": "Hello", "n_predict": rng.randint(0, 40)})).status_code
        elif kind == "schema":
            status = (await c.post("/completion", json={
                "prompt": "JSON:", "n_predict": 40,
                "json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
                ).status_code
        elif kind == "chat":
            status = (await c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})).status_code
        elif kind == "stream":
            async with c.stream("POST", "/completion", json={
                    "prompt": "Once", "n_predict": 40, "stream": True}) as r:
                status = r.status_code
                async for _ in r.aiter_lines():
                    pass
        elif kind == "leave":
            with trio.move_on_after(rng.uniform(0.01, 1.0)):
                async with c.stream("POST", "/completion", json=LONG) as r:
                    async for _ in r.aiter_lines():
                        pass
            stats["left"] += 1
        elif kind == "hostile":
            route, raw = rng.choice(HOSTILE)
            status = (await c.post(route, content=raw,
                                   headers={"Content-Type": "application/json"})).status_code
        elif kind == "tokenize":
            status = (await c.post("/tokenize", json={"content": "abc " * rng.randint(1, 50_000)})
                      ).status_code
        elif kind == "embed":
            status = (await c.post("/embedding", json={"content": "hello world"})).status_code
        elif kind == "slow":
            sock = await trio.to_thread.run_sync(_slow_socket, server.port)
            await trio.sleep(rng.uniform(0.5, 8))
            sock.close()
            stats["left"] += 1
        elif kind == "reload" and rng.random() < 0.1:
            status = (await c.post("/model/unload")).status_code
            load = await c.post("/model/load", json={"name": "only"})
            record(load.status_code)
        if status is not None:
            record(status)

    def record(status: int) -> None:
        stats["requests"] += 1
        if status < 300:
            stats["2xx"] += 1
        elif status < 500:
            stats["4xx"] += 1
        elif status == 503:
            stats["503"] += 1  # no model during a reload, or the admission limit
        else:
            stats["5xx"] += 1
            print("5xx:", status)

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as c:
            while time.monotonic() < deadline:
                try:
                    await one(c, rng)
                except httpx.HTTPError as exc:
                    stats["errors"] += 1
                    print("client error:", repr(exc)[:200])

    try:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(worker, i)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
            await c.post("/model/load", json={"name": "only"})
            idle = await wait_idle(c, 60)
            health = (await c.get("/health")).status_code
        rss_end = rss_mib(server.proc.pid)
        print(f"soak: {seconds:.0f} s, 8 clients: {stats}; /health {health}; all idle after "
              f"{idle:.1f} s; RSS {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at end")
    finally:
        print(f"soak: server exit status {server.terminate()}")


async def main(args: argparse.Namespace) -> None:
    scenes = {"storm": storm, "slow": slow, "sigterm": sigterm, "surface": surface}
    for name in args.only.split(","):
        if name == "soak":
            await soak(args.soak_s)
        else:
            await scenes[name]()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--soak-s", type=float, default=600.0)
    parser.add_argument("--only", default="storm,slow,sigterm,surface,soak")
    trio.run(main, parser.parse_args())
