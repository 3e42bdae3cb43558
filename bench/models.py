"""Several models: time to first token on a cold model, a warm one and after a swap, and the
server's RSS before a load, with the model loaded, and after it was unloaded.

Starts a server in router mode (``--models-dir`` with the two embedded models under new
names, ``--models-max 1``, nothing loaded at start) and reads the server process's RSS
from ``/proc``. Run on a quiet machine::

    .venv/bin/python bench/models.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.test_models import BASE, CHAT, multi_dir
from tests.serverproc import ServerProcess

PROMPT = "Once upon a time"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def first_token_s(base: str, model: str) -> float:
    """Seconds from sending a streamed request to its first generated text."""
    start = time.perf_counter()
    with httpx.stream("POST", base + "/completion", headers={"Connection": "close"}, json={
            "model": model, "prompt": PROMPT, "n_predict": 4, "stream": True, "temperature": 0,
            "cache_prompt": False}, timeout=120) as resp:
        resp.raise_for_status()
        elapsed = None
        for line in resp.iter_lines():  # one iterator, read to the end
            if elapsed is None and line.startswith("data: ") and \
                    json.loads(line[6:]).get("content"):
                elapsed = time.perf_counter() - start
    if elapsed is None:
        raise RuntimeError("no token")
    return elapsed


def unload(base: str, model: str) -> None:
    httpx.post(base + "/models/unload", json={"model": model}, timeout=60).raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = ServerProcess(["--models-dir", str(multi_dir()), "--models-max", "1",
                            "--parallel", "2", "--ctx-size", "4096"])
    try:
        server.wait_ready()
        base, pid = server.base_url, server.proc.pid
        rows: dict[str, list[float]] = {k: [] for k in (
            "cold", "warm", "swap", "rss_before", "rss_loaded", "rss_after")}
        for _ in range(args.rounds):
            unload(base, BASE)
            unload(base, CHAT)
            time.sleep(0.5)
            rows["rss_before"].append(rss_mib(pid))
            rows["cold"].append(first_token_s(base, BASE))
            rows["warm"].append(first_token_s(base, BASE))
            rows["rss_loaded"].append(rss_mib(pid))
            unload(base, BASE)
            time.sleep(0.5)
            rows["rss_after"].append(rss_mib(pid))
            first_token_s(base, CHAT)
            rows["swap"].append(first_token_s(base, BASE))  # evicts CHAT, loads BASE
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"time to first token, {BASE} (Gemma 3 270M), median of {args.rounds}:")
        print(f"  cold (not loaded)         {med['cold'] * 1000:8.0f} ms")
        print(f"  warm (loaded)             {med['warm'] * 1000:8.0f} ms")
        print(f"  after a swap (evicts {CHAT}) {med['swap'] * 1000:8.0f} ms")
        print(f"  cold / warm               {med['cold'] / med['warm']:8.1f} x")
        print("server RSS:")
        print(f"  before the load           {med['rss_before']:8.0f} MiB")
        print(f"  model loaded              {med['rss_loaded']:8.0f} MiB")
        print(f"  after unload              {med['rss_after']:8.0f} MiB")
        added = max(1e-9, med["rss_loaded"] - med["rss_before"])
        returned = (med["rss_loaded"] - med["rss_after"]) / added * 100
        print(f"  returned to the OS        {returned:8.0f} % of what the load added")
    finally:
        server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
