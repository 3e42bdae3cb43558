"""Benchmark of the grammar package, and of schema-constrained generation end to end.

Prints: conversion time per schema, recognizer throughput (KB/s) on accepted
JSON, and constrained vs unconstrained generation tokens/s on the same prompt
through a real server (ratio measured side by side, alternating).
Run: ``.venv/bin/python bench/bench_grammar.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grammar import Recognizer, convert, parse_gbnf  # noqa: E402
from tests.integration.test_schema import SCHEMAS, prompt  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402


def conversion_times() -> list[tuple[str, float, int]]:
    schemas: dict[str, Any] = dict(SCHEMAS)
    for path in sorted((ROOT / "tests/grammar/cases").glob("*.json")):
        schemas[path.stem] = json.loads(path.read_text())["schema"]
    out = []
    for name, schema in schemas.items():
        runs = []
        for _ in range(20):
            t0 = time.perf_counter()
            gbnf = convert(schema).gbnf
            runs.append(time.perf_counter() - t0)
        out.append((name, statistics.median(runs) * 1000, len(gbnf)))
    return out


def recognizer_rate() -> tuple[float, int]:
    schema = {"type": "array", "items": SCHEMAS["invoice"]}
    line = {"item": "hammer", "quantity": 2, "unit_price": 12.5}
    doc = [{"number": "INV-1234", "date": "2024-03-15", "currency": "EUR", "lines": [line] * 3}] * 40
    text = json.dumps(doc)
    recognizer = Recognizer(parse_gbnf(convert(schema).gbnf))
    assert recognizer.accepts(text)
    runs = []
    for _ in range(3):
        fresh = Recognizer(parse_gbnf(convert(schema).gbnf))
        t0 = time.perf_counter()
        fresh.accepts(text)
        runs.append(time.perf_counter() - t0)
    return len(text) / 1024 / statistics.median(runs), len(text)


def generation(repeats: int = 3) -> list[tuple[str, float, float, int, bool]]:
    out = []
    server = ServerProcess(["--parallel", "2"])
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            for name in ("person", "invoice", "meeting"):
                constrained, free, valid = [], [], True
                for _ in range(repeats):
                    c = client.post("/completion", json={
                        "prompt": prompt(name), "json_schema": SCHEMAS[name], "n_predict": 400,
                        "temperature": 0, "cache_prompt": False}).json()
                    n = c["tokens_predicted"]
                    f = client.post("/completion", json={
                        "prompt": prompt(name), "n_predict": n, "temperature": 0,
                        "ignore_eos": True, "cache_prompt": False}).json()
                    constrained.append(c["timings"]["predicted_per_second"])
                    free.append(f["timings"]["predicted_per_second"])
                    valid = valid and c["schema_valid"]
                out.append((name, statistics.median(constrained), statistics.median(free), n,
                            valid))
    finally:
        server.terminate()
    return out


def main() -> None:
    print("conversion (median of 20):")
    for name, ms, size in conversion_times():
        print(f"  {name:18s} {ms:7.2f} ms  ({size} bytes of GBNF)")
    rate, size = recognizer_rate()
    print(f"recognizer: {rate:.1f} KB/s on a {size / 1024:.1f} KB document (invoice array)")
    print("constrained generation vs free, same prompt and token count (server timings):")
    for name, c, f, n, valid in generation():
        print(f"  {name:10s} {c:6.1f} tok/s vs {f:6.1f} tok/s -> ratio {c / f:.2f} "
              f"({n} tokens, valid: {valid})")


if __name__ == "__main__":
    main()
