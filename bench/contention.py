"""Decode speed on a busy machine: each OpenMP wait setting, quiet and beside CPU-bound neighbours.

For every candidate setting a fresh server is started; a greedy completion is timed by the
server's own ``timings`` (decode tok/s) and by the client (time to first token), first on a
quiet machine, then with one and two busy-looping neighbour processes at nice 0 and nice 19.
llama.cpp's own server is measured the same way when ``LLAMA_SERVER`` names its binary.

    .venv/bin/python bench/contention.py [--tokens 32] [--runs 2]

Run it on an otherwise idle machine (check ``top``): the point is the neighbours it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess  # noqa: E402

#: name -> server flags (OMP_WAIT_POLICY and GOMP_SPINCOUNT are removed from the environment,
#: so --poll decides; --poll 100 is what ggml does by itself: an unbounded active wait)
CANDIDATES: dict[str, list[str]] = {
    "default (--poll 50 --adapt-threads on)": [],
    "--poll 5 --adapt-threads on": ["--poll", "5"],
    "--poll 100 --adapt-threads off (ggml's own: active, unbounded)": ["--poll", "100",
                                                                       "--adapt-threads", "off"],
    "--poll 50 (GOMP_SPINCOUNT=200000)": ["--poll", "50", "--adapt-threads", "off"],
    "--poll 5 (GOMP_SPINCOUNT=20000)": ["--poll", "5", "--adapt-threads", "off"],
    "--poll 0 (OMP_WAIT_POLICY=PASSIVE)": ["--poll", "0", "--adapt-threads", "off"],
    "-t 1 --poll 100": ["-t", "1", "--poll", "100"],
}
NEIGHBOURS = [(0, 0), (1, 0), (1, 19), (2, 19)]  # (count, nice)


def neighbours(count: int, nice: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])
            for _ in range(count)]


def measure(base: str, tokens: int, runs: int) -> tuple[float, float]:
    """(median decode tok/s by server timings, median time to first token in ms)."""
    speeds, ttfts = [], []
    # a new connection per request: llama.cpp's server may close an idle keep-alive one
    with httpx.Client(base_url=base, timeout=600, headers={"Connection": "close"}) as c:
        for i in range(runs):
            body = {"prompt": f"Once upon a time {i}", "n_predict": tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "cache_prompt": False}
            sent = time.monotonic()
            first = None
            final: dict[str, object] = {}
            with c.stream("POST", "/completion", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        if first is None and event.get("content"):
                            first = time.monotonic()
                        final = event
            timings = final.get("timings", {})
            assert isinstance(timings, dict)
            speeds.append(float(timings.get("predicted_per_second", 0.0)))
            ttfts.append(((first or time.monotonic()) - sent) * 1000)
    return statistics.median(speeds), statistics.median(ttfts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", action="append", default=[],
                        help="measure only the settings whose name contains this (repeatable)")
    args = parser.parse_args()
    print("| setting | " + " | ".join(
        "quiet" if n == 0 else f"{n} neighbour{'s' if n > 1 else ''}, nice {nice}"
        for n, nice in NEIGHBOURS) + " |")
    print("|---|" + "---|" * len(NEIGHBOURS))
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        os.environ.pop(key, None)
    for name, flags in CANDIDATES.items():
        if args.only and not any(o in name for o in args.only):
            continue
        server = ServerProcess(["--parallel", "1", *flags])
        try:
            server.wait_ready()
            print(f"| {name} | " + " | ".join(row(server.base_url, args)) + " |", flush=True)
        finally:
            server.terminate()
    binary = os.environ.get("LLAMA_SERVER")
    if not binary:
        print("(LLAMA_SERVER is not set: llama.cpp's server is not measured)")
        return
    from bench.prompt_cache import llama_server

    proc, base = llama_server(binary, "-np", "1")
    try:
        print("| llama.cpp server (its defaults, -np 1) | " + " | ".join(row(base, args)) + " |",
              flush=True)
    finally:
        proc.terminate()
        proc.wait()


def row(base: str, args: argparse.Namespace) -> list[str]:
    cells = []
    for count, nice in NEIGHBOURS:
        procs = neighbours(count, nice)
        try:
            time.sleep(0.5)
            speed, ttft = measure(base, args.tokens, args.runs)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        cells.append(f"{speed:.1f} tok/s, TTFT {ttft:.0f} ms")
    return cells


if __name__ == "__main__":
    main()
