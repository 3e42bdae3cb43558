"""Time to first token for a long shared system prompt: the host-memory prompt cache
(``--cache-ram``) against no cache, and llama.cpp's server when ``LLAMA_SERVER`` names its binary.

A ~1,500-token system prompt S1 and a short question, on a server with 2 slots:

* cold: the first request (S1 + question 1);
* busy: S1 + question 3 while S1 + question 2 is still generating on the other slot;
* after others: S1 + question 4 after three other conversations (other long system prompts)
  went through both slots.

Each server is fresh; every request is native ``/completion`` (llama.cpp's server takes the same
body), streamed, time to first token measured by the client.

    .venv/bin/python bench/prompt_cache.py [--tokens 1500]

Run it on an otherwise idle machine (check ``top``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serverproc import ServerProcess, free_port  # noqa: E402

SLUICE: dict[str, list[str]] = {
    "Sluice --cache-ram 8192 (default)": [],
    "Sluice --cache-ram 0 (no host cache)": ["--cache-ram", "0"],
}


def system_prompt(tag: str, tokens: int) -> str:
    """About ``tokens`` tokens of rules, distinct per ``tag`` from the first word on."""
    n = max(1, tokens // 19)  # about 19 tokens per rule with the default model
    return f"[{tag}] You are an assistant. " + " ".join(
        f"Rule {tag}-{i}: answer politely and cite the manual, section {i}." for i in range(n))


def ttft(client: httpx.Client, prompt: str, n_predict: int = 4) -> tuple[float, int]:
    """(ms to the first token, tokens the server took from its cache), on a new connection."""
    with httpx.Client(base_url=client.base_url, timeout=600) as fresh:
        return _ttft(fresh, prompt, n_predict)


def _ttft(client: httpx.Client, prompt: str, n_predict: int) -> tuple[float, int]:
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0, "stream": True,
            "cache_prompt": True}
    sent = time.monotonic()
    first = None
    cached = -1
    with client.stream("POST", "/completion", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if first is None and event.get("content"):
                first = time.monotonic()
            if event.get("stop"):
                cached = int(event.get("tokens_cached", -1))
    return ((first or time.monotonic()) - sent) * 1000, cached


def scenario(base: str, tokens: int) -> dict[str, tuple[float, int]]:
    s1 = system_prompt("S1", tokens)
    out: dict[str, tuple[float, int]] = {}
    with httpx.Client(base_url=base, timeout=600) as c:
        out["cold"] = ttft(c, s1 + "\nQuestion: what is rule 3?\nAnswer:")
        # a long generation of the same conversation keeps its slot busy
        body = {"prompt": s1 + "\nQuestion: list every rule.\nAnswer:", "n_predict": 2000,
                "temperature": 0, "ignore_eos": True, "stream": True}
        with c.stream("POST", "/completion", json=body) as busy:
            lines = busy.iter_lines()
            for line in lines:  # wait until it generates
                if line.startswith("data: ") and '"content"' in line:
                    break
            out["busy"] = ttft(c, s1 + "\nQuestion: what is rule 7?\nAnswer:")
        time.sleep(0.5)  # the server sees the closed stream and frees the slot
        for tag in ("S2", "S3", "S4"):
            ttft(c, system_prompt(tag, tokens) + "\nQuestion: hello?\nAnswer:")
        out["after 3 others"] = ttft(c, s1 + "\nQuestion: what is rule 9?\nAnswer:")
    return out


def llama_server(binary: str, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """llama.cpp's server with the default model on a free port (default flags: -np 2 -c 8192)."""
    from app.engine.model import default_model_path

    port = free_port()
    proc = subprocess.Popen([binary, "-m", str(default_model_path()), "--port", str(port),
                             *(flags or ("-np", "2", "-c", "8192"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1500)
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, tuple[float, int]]]] = []
    for name, flags in SLUICE.items():
        server = ServerProcess(["--parallel", "2", "--ctx-size", "8192", *flags])
        try:
            server.wait_ready()
            rows.append((name, scenario(server.base_url, args.tokens)))
        finally:
            server.terminate()
    binary = os.environ.get("LLAMA_SERVER")
    if binary:
        proc, base = llama_server(binary)
        try:
            rows.append(("llama.cpp server (defaults, -np 2 -c 8192)", scenario(base, args.tokens)))
        finally:
            proc.terminate()
            proc.wait()
    else:
        print("(LLAMA_SERVER is not set: llama.cpp's server is not measured)")
    print("| server | cold TTFT | busy: TTFT, cached | after 3 others: TTFT, cached |"
          " busy / cold | after / cold |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        cold = r["cold"][0]
        cells = [f"{r['cold'][0]:.0f} ms"] + [f"{r[k][0]:.0f} ms, {r[k][1]} tokens"
                                               for k in ("busy", "after 3 others")]
        ratios = [f"{r[k][0] / cold:.2f}" for k in ("busy", "after 3 others")]
        print(f"| {name} | " + " | ".join(cells + ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
