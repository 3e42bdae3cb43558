"""Benchmark: Sluice against in-process llama-cpp-python on the same machine, same run.

Prints figures and ratios (the machines are noisy: only side-by-side ratios
count). Run with ``make bench`` or ``.venv/bin/python bench/bench_server.py``.

Measures:
  1. single-stream generation tokens/s: server vs in-process ``Llama``;
  2. time to first token: server vs in-process;
  3. aggregate generation tokens/s at 1, 2, 4, 8 concurrent streams;
  4. grammar-constrained vs unconstrained tokens/s on the same prompt (server),
     with in-process ``Llama`` + grammar for reference;
  5. client disconnect to slot free;
  6. determinism: how often greedy outputs decoded side by side equal solo runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine.model import Model, default_model_path  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

PROMPT = (
    "The following is a detailed report on the history of rivers and their role in the "
    "growth of early cities. Rivers provided water for drinking and farming, routes for "
    "trade, and fish for food. Along the Nile, the Tigris and the Euphrates, the Indus and "
    "the Yellow River, people learned to build canals, to measure floods and to store grain. "
    "These skills became the basis of writing, law and government. In this report we look at "
    "each river in turn, starting with the Nile, and describe how its yearly flood shaped the "
    "calendar, the religion and the economy of ancient Egypt. The Nile"
)
GRAMMAR = r'''root ::= "[" ws item ("," ws item){0,5} ws "]"
item ::= "{" ws "\"name\":" ws str "," ws "\"age\":" ws num ws "}"
str ::= "\"" [A-Za-z ]{1,24} "\""
num ::= [0-9]{1,3}
ws ::= [ \n]{0,2}
'''
GRAMMAR_PROMPT = "A JSON list of people from the story, with their names and ages:\n"
N_GEN = 128
THREADS = 2


class InProcess:
    """llama-cpp-python's high-level ``Llama`` in this process: the baseline.

    Its runs alternate with the server's (the server idles meanwhile), so both
    see the same machine state.
    """

    def __init__(self, model_path: Path, eog: list[int]) -> None:
        from llama_cpp import Llama

        self.llm = Llama(str(model_path), n_ctx=2048, n_batch=512, n_threads=THREADS,
                         n_threads_batch=THREADS, flash_attn=False, verbose=False)
        self.bias = {t: -math.inf for t in eog}

    def single_stream(self) -> tuple[float, float]:
        """(generation tok/s, time to first token in s) for PROMPT."""
        self.llm.reset()
        t0 = time.perf_counter()
        stamps = []
        for _chunk in self.llm.create_completion(PROMPT, max_tokens=N_GEN, temperature=0.0,
                                                 logit_bias=self.bias, stream=True):
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), stamps[0] - t0

    def grammar(self) -> tuple[float, int]:
        from llama_cpp import LlamaGrammar

        self.llm.reset()
        grammar = LlamaGrammar.from_string(GRAMMAR, verbose=False)
        t0 = time.perf_counter()
        out = self.llm.create_completion(GRAMMAR_PROMPT, max_tokens=4 * N_GEN, temperature=0.0,
                                         grammar=grammar)
        n = int(out["usage"]["completion_tokens"])
        return n / (time.perf_counter() - t0), n

    def close(self) -> None:
        self.llm.close()


async def stream_once(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    stamps: list[float] = []
    final: dict[str, Any] = {}
    async with client.stream("POST", "/completion", json={**body, "stream": True}) as resp:
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["stop"]:
                final = event
            elif event["tokens"]:
                stamps.append(time.perf_counter())
    end = time.perf_counter()
    return {"t0": t0, "stamps": stamps, "end": end, "final": final}


async def server_figures(base: str, local: InProcess, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300.0)) as client:
        body = {"prompt": PROMPT, "n_predict": N_GEN, "temperature": 0.0, "ignore_eos": True,
                "cache_prompt": False}
        rates, ttfts, local_rates, local_ttfts = [], [], [], []
        for _ in range(repeats):
            r = await stream_once(client, body)
            s = r["stamps"]
            rates.append((len(s) - 1) / (s[-1] - s[0]))
            ttfts.append(s[0] - r["t0"])
            rate, ttft = await trio.to_thread.run_sync(local.single_stream)
            local_rates.append(rate)
            local_ttfts.append(ttft)
        engine_rates = []
        for _ in range(repeats):
            r = (await client.post("/completion", json=body)).json()
            engine_rates.append(r["timings"]["predicted_per_second"])
        out["engine_tps"] = statistics.median(engine_rates)
        out["gen_tps"] = statistics.median(rates)
        out["ttft_s"] = statistics.median(ttfts)
        out["local_gen_tps"] = statistics.median(local_rates)
        out["local_ttft_s"] = statistics.median(local_ttfts)

        out["aggregate"] = {}
        for n in (1, 2, 4, 8):
            results: list[dict[str, Any]] = []

            async def one(i: int, results: list[dict[str, Any]] = results) -> None:
                results.append(await stream_once(client, {
                    "prompt": f"Story number {i}: once upon a time", "n_predict": N_GEN,
                    "temperature": 0.8, "seed": i, "ignore_eos": True, "cache_prompt": False}))

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
            wall = time.perf_counter() - t0
            tokens = sum(len(r["stamps"]) for r in results)
            first = max(r["stamps"][0] for r in results)
            last = min(r["stamps"][-1] for r in results)
            in_window = sum(sum(1 for t in r["stamps"] if first <= t <= last) for r in results)
            out["aggregate"][n] = {"end_to_end_tps": tokens / wall,
                                   "decode_phase_tps": in_window / (last - first)}

            # The same load without streaming: the client sleeps until each reply, so on a
            # 2-core machine it no longer competes with the server's decode threads.
            async def plain(i: int) -> None:
                await client.post("/completion", json={
                    "prompt": f"Story number {i}: once upon a time", "n_predict": N_GEN,
                    "temperature": 0.8, "seed": i, "ignore_eos": True, "cache_prompt": False})

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(plain, i)
            out["aggregate"][n]["non_streaming_tps"] = n * N_GEN / (time.perf_counter() - t0)

        constrained, free = [], []
        for _ in range(repeats):
            g = (await client.post("/completion", json={
                "prompt": GRAMMAR_PROMPT, "n_predict": 4 * N_GEN, "temperature": 0.0,
                "grammar": GRAMMAR, "cache_prompt": False})).json()
            n_g = g["tokens_predicted"]
            f = (await client.post("/completion", json={
                "prompt": GRAMMAR_PROMPT, "n_predict": n_g, "temperature": 0.0,
                "ignore_eos": True, "cache_prompt": False})).json()
            constrained.append(g["timings"]["predicted_per_second"])
            free.append(f["timings"]["predicted_per_second"])
        local_g, local_n = await trio.to_thread.run_sync(local.grammar)
        out["grammar"] = {
            "constrained_tps": statistics.median(constrained),
            "free_tps": statistics.median(free),
            "tokens": n_g, "rejections": g["grammar_stats"]["rejections"],
            "full_passes": g["grammar_stats"]["full_passes"],
            "valid_json": _is_json(g["content"]),
            "local_tps": local_g, "local_tokens": local_n,
        }

        waits = []
        for _ in range(5):
            async with client.stream("POST", "/completion", json={
                    "prompt": PROMPT, "n_predict": 4000, "ignore_eos": True,
                    "stream": True}) as resp:
                n = 0
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        n += 1
                        if n == 10:
                            break
            closed = time.perf_counter()
            async with httpx.AsyncClient(base_url=base) as probe:
                while True:
                    slots = (await probe.get("/slots")).json()
                    if not any(s["is_processing"] for s in slots):
                        break
                    await trio.sleep(0.002)
            waits.append(time.perf_counter() - closed)
        out["disconnect_to_free_ms"] = {"median": statistics.median(waits) * 1000,
                                        "max": max(waits) * 1000}
    return out


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


DET_PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
    "The three primary colors are", "In 1969, the first humans", "A recipe for bread:",
    "The mitochondria is", "Dear hiring manager,",
]


async def determinism(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300.0)) as client:
        async def run(p: str) -> list[int]:
            r = await client.post("/completion", json={"prompt": p, "n_predict": 64,
                                                       "temperature": 0.0, "cache_prompt": False,
                                                       "ignore_eos": True,
                                                       "return_tokens": True})
            return r.json()["tokens"]  # type: ignore[no-any-return]

        solo = [await run(p) for p in DET_PROMPTS]
        batched: dict[int, list[int]] = {}

        async def one(i: int) -> None:
            batched[i] = await run(DET_PROMPTS[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(DET_PROMPTS)):
                nursery.start_soon(one, i)
    prefixes = []
    for i, s in enumerate(solo):
        b = batched[i]
        k = 0
        while k < min(len(s), len(b)) and s[k] == b[k]:
            k += 1
        prefixes.append(k)
    return {"identical": sum(1 for i, s in enumerate(solo) if s == batched[i]),
            "of": len(solo), "common_prefix_tokens": prefixes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path = default_model_path()
    model = Model(path)
    eog = sorted(model.eog_ids)
    model.close()

    server = ServerProcess(["--parallel", "8", "--ctx-size", "16384", "--threads", str(THREADS)])
    local = InProcess(path, eog)
    try:
        server.wait_ready()
        srv = trio.run(server_figures, server.base_url, local, args.repeats)
        det = trio.run(determinism, server.base_url)
    finally:
        server.terminate()
        local.close()

    print(f"model: {path.name}, {N_GEN} generated tokens, temperature 0, {THREADS} threads")
    print(f"single stream generation: server {srv['gen_tps']:.1f} tok/s as the streaming client "
          f"sees it, in-process Llama {srv['local_gen_tps']:.1f} tok/s -> ratio "
          f"{srv['gen_tps'] / srv['local_gen_tps']:.2f}; non-streaming (server timings) "
          f"{srv['engine_tps']:.1f} tok/s -> ratio {srv['engine_tps'] / srv['local_gen_tps']:.2f}")
    print(f"time to first token ({len(PROMPT.split())}-word prompt): server "
          f"{srv['ttft_s'] * 1000:.0f} ms, in-process {srv['local_ttft_s'] * 1000:.0f} ms -> "
          f"overhead {(srv['ttft_s'] - srv['local_ttft_s']) * 1000:+.0f} ms")
    base = srv["aggregate"][1]
    for n, fig in srv["aggregate"].items():
        print(f"{n} concurrent streams: {fig['end_to_end_tps']:.1f} tok/s end to end "
              f"({fig['end_to_end_tps'] / base['end_to_end_tps']:.2f}x of 1), decode phase "
              f"{fig['decode_phase_tps']:.1f} tok/s "
              f"({fig['decode_phase_tps'] / base['decode_phase_tps']:.2f}x); non-streaming "
              f"{fig['non_streaming_tps']:.1f} tok/s "
              f"({fig['non_streaming_tps'] / base['non_streaming_tps']:.2f}x)")
    g = srv["grammar"]
    print(f"grammar: constrained {g['constrained_tps']:.1f} tok/s vs free {g['free_tps']:.1f} tok/s "
          f"-> ratio {g['constrained_tps'] / g['free_tps']:.2f} ({g['tokens']} tokens, "
          f"{g['rejections']} rejections, {g['full_passes']} full passes, valid JSON: {g['valid_json']})")
    print(f"in-process Llama with the same grammar: {g['local_tps']:.1f} tok/s "
          f"end to end ({g['local_tokens']} tokens)")
    d = srv["disconnect_to_free_ms"]
    print(f"client disconnect to slot free: median {d['median']:.0f} ms, max {d['max']:.0f} ms "
          "(includes the /slots polling)")
    print(f"determinism: {det['identical']}/{det['of']} greedy outputs decoded 8 side by side equal "
          f"their solo runs; common prefix tokens {det['common_prefix_tokens']} of 64")


if __name__ == "__main__":
    main()
