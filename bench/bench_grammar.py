"""Benchmark of the grammar package, and of schema-constrained generation end to end.

Prints: conversion time per schema, recognizer throughput (KB/s) on accepted
JSON, and constrained vs unconstrained generation tokens/s on the same prompt
through a real server (ratio measured side by side, alternating).
Then hard cases (a 50-name enum, a pattern-heavy object, a deep nested array, a tool call),
greedy and sampled, with the share of tokens whose grammar step needed the full mask.
Run: ``.venv/bin/python bench/bench_grammar.py [--hard]`` (``--hard``: only the hard cases).
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


FIRST = ["Alexander", "Beatrice", "Cornelius", "Dorothea", "Evangeline", "Fitzgerald", "Genevieve",
         "Horatio", "Isadora", "Jebediah"]
LAST = ["Abernathy", "Blackwood", "Castellanos", "Delacroix", "Esterhazy"]
NAMES = [f"{f} {x}" for f in FIRST for x in LAST]  # 50 multi-token names

HARD: dict[str, tuple[str, dict[str, Any]]] = {
    "enum of 50 names": ("A JSON list of five guests:\n", {
        "type": "object", "properties": {"guests": {
            "type": "array", "items": {"enum": NAMES}, "minItems": 5, "maxItems": 5}},
        "required": ["guests"]}),
    "pattern-heavy object": ("A customer record as JSON:\n", {
        "type": "object", "properties": {
            "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$"},
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "phone": {"type": "string", "pattern": "^\\+[0-9]{1,3} [0-9]{3} [0-9]{3} [0-9]{4}$"},
            "sku": {"type": "string", "pattern": "^[a-z0-9]{8}$"},
            "zip": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"}},
        "required": ["id", "date", "phone", "sku", "zip"]}),
    "deep nested array": ("A 3-level nested JSON array of small integers:\n", {
        "type": "array", "minItems": 2, "maxItems": 3, "items": {
            "type": "array", "minItems": 2, "maxItems": 3, "items": {
                "type": "array", "minItems": 2, "maxItems": 4, "items": {
                    "type": "integer", "minimum": 0, "maximum": 99}}}}),
}


def tool_grammar() -> str:
    from grammar.tools import ToolSchema, tool_calls_gbnf

    tools = [ToolSchema("get_weather", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}),
        ToolSchema("search_flights", {"type": "object", "properties": {
            "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "date": {"type": "string", "format": "date"}, "passengers": {"type": "integer",
                                                                          "minimum": 1,
                                                                          "maximum": 9}},
            "required": ["origin", "destination", "date", "passengers"]})]
    return tool_calls_gbnf(tools, mode="required", parallel=False, open_tag="<tool_call>\n",
                           close_tag="\n</tool_call>").gbnf


def hard_cases(repeats: int = 3) -> list[tuple[str, str, float, float, int, float]]:
    """(case, sampling, constrained tok/s, free tok/s, tokens, share of tokens with a full pass)."""
    cases: list[tuple[str, str, dict[str, Any]]] = [
        (name, p, {"json_schema": schema}) for name, (p, schema) in HARD.items()]
    cases.append(("tool call (2 tools)", "User: find a flight from Paris to Rome on May 3rd.\n"
                  "Assistant: ", {"grammar": tool_grammar()}))
    modes = {"greedy": {"temperature": 0}, "sampled (defaults, seed 1)": {"seed": 1}}
    out = []
    server = ServerProcess(["--parallel", "1"])
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=600) as client:
            for name, text, constraint in cases:
                for mode, sampling in modes.items():
                    constrained, free, shares = [], [], []
                    n = 0
                    for _ in range(repeats):
                        c = client.post("/completion", json={
                            "prompt": text, "n_predict": 200, "cache_prompt": False, **sampling,
                            **constraint}).json()
                        n = c["tokens_predicted"]
                        f = client.post("/completion", json={
                            "prompt": text, "n_predict": n, "ignore_eos": True,
                            "cache_prompt": False, **sampling}).json()
                        constrained.append(c["timings"]["predicted_per_second"])
                        free.append(f["timings"]["predicted_per_second"])
                        stats = c.get("grammar_stats") or {"full_passes": 0}
                        shares.append(stats["full_passes"] / max(1, n))
                    out.append((name, mode, statistics.median(constrained), statistics.median(free),
                                n, statistics.median(shares)))
    finally:
        server.terminate()
    return out


def main() -> None:
    if "--hard" not in sys.argv:
        easy()
    print("hard cases (one slot, median of 3; full passes: share of tokens whose grammar step "
          "needed the whole-vocabulary mask):")
    print("| case | sampling | constrained tok/s | free tok/s | ratio | tokens | full passes |")
    print("|---|---|---|---|---|---|---|")
    for name, mode, c, f, n, share in hard_cases():
        print(f"| {name} | {mode} | {c:.1f} | {f:.1f} | {c / f:.2f} | {n} | {share:.0%} |",
              flush=True)


def easy() -> None:
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
