"""Replicas behind nginx: what the proxy costs one stream (tokens/s and time to first token,
through nginx vs directly, the same replica, side by side), and the aggregate tokens/s of 8
concurrent streams through nginx with 1 replica, 2 replicas, and 2 replicas of one thread each.

Run on a quiet machine (nginx installed; ``make test`` installs it)::

    .venv/bin/python bench/cluster.py [--rounds 3] [--tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.cluster import Cluster
from tests.serverproc import free_port

ARGS = ["--parallel", "4", "--ctx-size", "8192"]
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def one_stream(url: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds for the rest, tokens) of one stream."""
    start = time.perf_counter()
    first = None
    n = 0
    with httpx.stream("POST", url + "/completion", headers={"Connection": "close"}, json={
            "prompt": PROMPT, "n_predict": tokens, "stream": True, "ignore_eos": True,
            "cache_prompt": False, "temperature": 0.8, "seed": 1}, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"stop":false' in line:
                n += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return first - start, end - first, n


def freed_after_leaving(client_url: str, replica_urls: list[str]) -> float:
    """Seconds from a client closing its stream (after 3 tokens) to every slot being free."""
    with httpx.stream("POST", client_url + "/completion", timeout=300, json={
            "prompt": PROMPT, "n_predict": 2000, "stream": True, "ignore_eos": True}) as resp:
        seen = 0
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= 3:
                    break
    closed = time.perf_counter()
    while any(s["is_processing"] for url in replica_urls
              for s in httpx.get(url + "/slots", timeout=30).json()):
        time.sleep(0.005)
    return time.perf_counter() - closed


def second_turn_cached(url: str, session: str | None, story: str) -> int:
    headers = {"X-Session-Id": session} if session else {}
    first = httpx.post(url + "/completion", headers=headers, timeout=300, json={
        "prompt": story, "n_predict": 8, "temperature": 0}).json()
    second = httpx.post(url + "/completion", headers=headers, timeout=300, json={
        "prompt": story + first["content"] + " And then", "n_predict": 4,
        "temperature": 0}).json()
    return int(second["tokens_cached"])


def aggregate(url: str, streams: int, tokens: int) -> float:
    """Tokens per second over ``streams`` concurrent streams."""
    counts: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        _, _, n = one_stream(url, tokens)
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=run) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    direct_tps: list[float] = []
    proxy_tps: list[float] = []
    direct_ttft: list[float] = []
    proxy_ttft: list[float] = []
    agg1: list[float] = []
    agg2: list[float] = []
    with Cluster([free_port()], free_port(), ARGS) as one:
        one_stream(one.url, 8)  # warm-up
        for _ in range(args.rounds):
            for url, ttfts, rates in ((one.replica_url(0), direct_ttft, direct_tps),
                                      (one.url, proxy_ttft, proxy_tps)):
                ttft, rest, n = one_stream(url, args.tokens)
                ttfts.append(ttft)
                rates.append((n - 1) / rest)
            agg1.append(aggregate(one.url, 8, args.tokens))
    leave_direct: list[float] = []
    leave_proxy: list[float] = []
    with Cluster([free_port(), free_port()], free_port(), ARGS) as two:
        one_stream(two.url, 8)
        one_stream(two.url, 8)
        agg2 += [aggregate(two.url, 8, args.tokens) for _ in range(args.rounds)]
        replicas = [two.replica_url(0), two.replica_url(1)]
        for _ in range(args.rounds):
            leave_direct.append(freed_after_leaving(replicas[0], replicas))
            leave_proxy.append(freed_after_leaving(two.url, replicas))
        story = ("an old fisherman told the children stories about the islands beyond the "
                 "horizon, where the birds were made of glass.")
        cached_without = second_turn_cached(two.url, None, "On a quiet morning, " + story)
        cached_with = second_turn_cached(two.url, "session-1", "In a city of bridges, " + story)
    agg2t1: list[float] = []  # each replica with one thread: the cores shared, not fought over
    with Cluster([free_port(), free_port()], free_port(), [*ARGS, "-t", "1", "-tb", "1"]) as two:
        one_stream(two.url, 8)
        one_stream(two.url, 8)
        agg2t1 += [aggregate(two.url, 8, args.tokens) for _ in range(args.rounds)]
    med = statistics.median
    print(f"one stream of {args.tokens} tokens, the same replica, median of {args.rounds}:")
    for name, tps, ttft in (("direct", direct_tps, direct_ttft),
                            ("through nginx", proxy_tps, proxy_ttft)):
        print(f"  {name:15s} {med(tps):7.1f} tok/s, first token {med(ttft) * 1000:6.1f} ms")
    print(f"  proxy / direct  {med(proxy_tps) / med(direct_tps):7.3f} x tokens/s; "
          f"first token {(med(proxy_ttft) - med(direct_ttft)) * 1000:+.1f} ms")
    print("a client that leaves after 3 tokens: its slot is free again after")
    print(f"  direct          {med(leave_direct) * 1000:7.1f} ms")
    print(f"  through nginx   {med(leave_proxy) * 1000:7.1f} ms")
    print("second turn of a conversation through nginx, tokens_cached:")
    print(f"  no X-Session-Id {cached_without:7d}")
    print(f"  X-Session-Id    {cached_with:7d}")
    print("8 concurrent streams through nginx (aggregate tokens/s):")
    print(f"  1 replica       {med(agg1):7.1f}")
    print(f"  2 replicas      {med(agg2):7.1f}   ({med(agg2) / med(agg1):.2f} x)")
    print(f"  2 replicas -t 1 {med(agg2t1):7.1f}   ({med(agg2t1) / med(agg1):.2f} x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
