"""Extraction benchmark: does a plain JSON schema give a finished, valid object with the right
values, on both embedded models and on the native and OpenAI chat routes?

Each task of ``bench/extraction_tasks.py`` (a text, a schema as users write it, the gold
values) is sent greedily through one server per model, once with the schema itself
(Sluice's converter, the default generation shape) and once as the GBNF of llama.cpp's own
converter (``llama_cpp.llama_grammar.json_schema_to_gbnf``, shipped with llama-cpp-python)
on the same engine, prompts and limits: the anchor. Prompts are never cached
(``cache_prompt: false``): a cached prompt's logits differ slightly from a fresh one's, and the
second converter's request would otherwise reuse the first's. ``--spec`` adds a column, the
schema with ``schema_mode: "spec"`` (the spec-faithful shape); ``--unguarded`` one with the
default shape but without the loop guard (``dry_multiplier: 0``; the llama.cpp column has no
guard either, as llama.cpp's server has none). Per model, route and converter it prints:

* valid: the reply is JSON that validates against the schema *and* ended because the grammar
  was complete (``stop_type`` eos / ``finish_reason`` stop), not at the token limit;
* gold: the share of gold fields (leaves, array items by position) the reply got right, plus
  each schema field the text does not state that the reply left out (or null);
* tokens per object, and constrained tokens/s (generated tokens over the server's decode time).

Run on a quiet machine (check ``top``; never beside the test suite)::

    .venv/bin/python bench/extraction.py [--limit 200] [--concurrency 2] [--spec]
        [--unguarded] [--tasks person-1,people-3] [--models gemma3-270m]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from extraction_tasks import TASKS  # noqa: E402

from grammar import validate  # noqa: E402
from tests.serverproc import running_server  # noqa: E402

MODELS = ("gemma3-270m", "smollm2-135m-instruct")
ROUTES = ("native", "chat")
SYSTEM = "Extract the facts of the user's text as JSON. Leave out what the text does not say."


def native_prompt(text: str) -> str:
    return f"Text: {text}\nThe facts of the text as JSON:\n"


def llama_cpp_gbnf(schema: Any) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(json.dumps(schema)))


def ask(client: httpx.Client, route: str, task: dict[str, Any], converter: str,
        limit: int) -> dict[str, Any]:
    """One reply: its text, whether the grammar ended it, its token count and decode time."""
    constraint: dict[str, Any]
    if converter == "llama.cpp":
        constraint = {"grammar": llama_cpp_gbnf(task["schema"])}
    elif converter == "sluice":
        constraint = {"json_schema": task["schema"]}
    elif converter == "unguarded":  # the default shape without the loop guard (DRY off)
        constraint = {"json_schema": task["schema"], "dry_multiplier": 0}
    else:
        constraint = {"json_schema": task["schema"], "schema_mode": "spec"}
    started = time.perf_counter()
    if route == "native":
        r = client.post("/completion", json={
            "prompt": native_prompt(task["text"]), "n_predict": limit, "temperature": 0,
            "cache_prompt": False, **constraint})
        r.raise_for_status()
        body = r.json()
        text, finished = body["content"], body["stop_type"] == "eos"
        n, ms = body["tokens_predicted"], body["timings"]["predicted_ms"]
    else:
        if "json_schema" in constraint:
            constraint = {**{k: v for k, v in constraint.items() if k != "json_schema"},
                          "response_format": {"type": "json_schema", "json_schema": {
                              "name": "facts", "schema": task["schema"]}}}
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": task["text"]}],
            "max_tokens": limit, "temperature": 0, "cache_prompt": False, **constraint})
        r.raise_for_status()
        body = r.json()
        choice = body["choices"][0]
        text, finished = choice["message"]["content"] or "", choice["finish_reason"] == "stop"
        n, ms = body["usage"]["completion_tokens"], body["timings"]["predicted_ms"]
    return {"text": text, "finished": finished, "tokens": n, "ms": ms,
            "wall_s": time.perf_counter() - started}


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(want, str) and isinstance(got, str):
        def norm(s: str) -> str:
            return " ".join(s.lower().strip(" .,#").split())
        return norm(got) == norm(want)
    return bool(got == want)


def score(got: Any, want: Any, schema: Any) -> tuple[int, int]:
    """(right, counted) over the gold leaves, and the schema fields the text does not state."""
    if isinstance(want, dict):
        right = counted = 0
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        have = got if isinstance(got, dict) else {}
        for key, sub in props.items():
            if key in want:
                r, c = score(have.get(key), want[key], sub)
            else:  # not in the text: right when left out
                r, c = int(have.get(key) is None), 1
            right, counted = right + r, counted + c
        return right, counted
    if isinstance(want, list):
        items = got if isinstance(got, list) else []
        right = counted = 0
        for i, w in enumerate(want):
            r, c = score(items[i] if i < len(items) else None, w, schema.get("items", {}))
            right, counted = right + r, counted + c
        extra = max(0, len(items) - len(want))  # invented items count against
        return right, counted + extra
    return int(got is not None and _same(got, want)), 1


def judge(task: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    result = validate(reply["text"], task["schema"])
    try:
        value = json.loads(reply["text"])
    except ValueError:
        value = None
    right, counted = score(value, task["gold"], task["schema"])
    return {**reply, "valid": result.valid and reply["finished"], "right": right,
            "counted": counted}


def run_model(model: str, converters: list[str], tasks: list[dict[str, Any]], limit: int,
              verbose: bool, concurrency: int) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every (route, converter, task) once; ``concurrency`` requests at a time (each
    converter's requests decode beside the same mix of others, so the columns stay fair)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    jobs = [(route, converter, task) for route in ROUTES for task in tasks
            for converter in converters]
    with running_server("-m", model, "--parallel", str(concurrency),
                        "-c", str(4096 * concurrency)) as server, \
            httpx.Client(base_url=server.base_url, timeout=900) as client, \
            concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        def one(job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
            route, converter, task = job
            return judge(task, ask(client, route, task, converter, limit))

        for (route, converter, task), row in zip(jobs, pool.map(one, jobs), strict=True):
            out.setdefault((route, converter), []).append(row)
            if verbose:
                print(f"  {model} {route} {converter} {task['name']}: "
                      f"valid={row['valid']} {row['right']}/{row['counted']} "
                      f"{row['tokens']} tok {row['text'][:100]!r}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="max tokens per reply")
    parser.add_argument("--spec", action="store_true", help="also the spec-faithful shape")
    parser.add_argument("--unguarded", action="store_true",
                        help="also the default shape without the loop guard")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default all)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--concurrency", type=int, default=2,
                        help="requests at a time (slots of the server)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    names = {n for n in args.tasks.split(",") if n}
    tasks = [t for t in TASKS if not names or t["name"] in names]
    converters = ["sluice", "llama.cpp"] + (["unguarded"] if args.unguarded else []) + \
        (["spec"] if args.spec else [])
    print(f"{len(tasks)} tasks, greedy, at most {args.limit} tokens each; "
          f"converters: {', '.join(converters)}")
    print(f"{'model':24} {'route':7} {'converter':10} {'valid':>7} {'gold':>7} "
          f"{'tok/obj':>8} {'tok/s':>7}")
    for model in args.models.split(","):
        results = run_model(model, converters, tasks, args.limit, args.verbose,
                            args.concurrency)
        for (route, converter), rows in results.items():
            valid = sum(r["valid"] for r in rows) / len(rows)
            gold = sum(r["right"] for r in rows) / sum(r["counted"] for r in rows)
            tokens = sum(r["tokens"] for r in rows)
            rate = tokens / (sum(r["ms"] for r in rows) / 1000)
            print(f"{model:24} {route:7} {converter:10} {valid:7.1%} {gold:7.1%} "
                  f"{tokens / len(rows):8.1f} {rate:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
