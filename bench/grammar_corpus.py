"""Conversion time and grammar size on large schemas, and what open objects and any-order
properties cost in grammar size.

A seeded corpus of large schemas in the shapes real ones take (Kubernetes-like nesting, wide
objects, ``$defs`` with ``$ref`` chains, discriminated unions, big enums, pattern-heavy
records, OpenAPI-style tool schemas) is converted once cold (no cache) per schema. Prints
conversion time p50/p99/max, GBNF size p50/p99/max, the Python GBNF parse time, llama.cpp's
own grammar build time when ``--llama`` is given (loads the embedded model's vocabulary), and
the size ratios of the modes. Run on a quiet machine:

    .venv/bin/python bench/grammar_corpus.py [--n 300] [--seed 1] [--llama]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import grammar.containers as containers
from grammar import GbnfSyntaxError, SchemaError, convert, parse_gbnf

conv_mod = importlib.import_module("grammar.convert")  # the module (the package exports a function)


def _clear_cache() -> None:
    cache = getattr(conv_mod, "_CACHE", None)  # absent in older versions (for comparisons)
    if cache is not None:
        cache.clear()

JSON = Any


def _leaf(rng: random.Random, depth: int) -> JSON:
    kinds = "sinbeupfad" if depth < 5 else "sinbe"
    k = rng.choice(kinds)
    desc = {"description": "a field " * rng.randint(1, 8)}
    if k == "s":
        return {"type": "string", "maxLength": rng.randint(8, 256), **desc}
    if k == "i":
        return {"type": "integer", "minimum": 0, "maximum": rng.randint(1, 10**6), **desc}
    if k == "n":
        return {"type": "number", "minimum": -1000, "maximum": rng.choice([1, 100, 1e6]), **desc}
    if k == "b":
        return {"type": "boolean", **desc}
    if k == "e":
        return {"enum": [f"value_{j}" for j in range(rng.randint(2, 40))], **desc}
    if k == "u":
        return {"type": ["string", "null"], **desc}
    if k == "p":
        return {"type": "string", "pattern": rng.choice([
            "^[a-z][a-z0-9-]{0,62}$", "^[A-Z]{3}-[0-9]{4,8}$", "^(?:[A-Za-z0-9+/]{4})*$",
            "^\\d{4}-\\d{2}-\\d{2}$", "^(https?|ftp)://[^ ]+$"]), **desc}
    if k == "f":
        return {"type": "string", "format": rng.choice(
            ["date-time", "uri", "hostname", "uuid", "email", "date", "ipv4"]), **desc}
    if k == "a":
        return {"type": "array", "items": _leaf(rng, depth + 1), "maxItems": rng.randint(1, 50)}
    return _object(rng, depth + 1, rng.randint(2, 12))


def _object(rng: random.Random, depth: int, width: int) -> JSON:
    props = {f"{rng.choice(['spec', 'name', 'meta', 'item', 'x'])}_{j}": _leaf(rng, depth)
             for j in range(width)}
    return {"type": "object", "properties": props,
            "required": rng.sample(sorted(props), rng.randint(0, min(width, 4)))}


def kubernetes_like(rng: random.Random) -> JSON:
    return {"type": "object", "properties": {f"section_{i}": _object(rng, 1, rng.randint(3, 10))
                                             for i in range(rng.randint(3, 8))}}


def wide(rng: random.Random) -> JSON:
    return _object(rng, 3, rng.randint(60, 250))


def defs_and_refs(rng: random.Random) -> JSON:
    n = rng.randint(20, 80)
    defs: dict[str, JSON] = {}
    for i in range(n):
        node = _object(rng, 3, rng.randint(2, 8))
        if i > 0:
            node["properties"]["link"] = {"$ref": f"#/$defs/d{rng.randrange(i)}"}
        if rng.random() < 0.2:
            node["properties"]["children"] = {"type": "array", "items": {"$ref": f"#/$defs/d{i}"}}
        defs[f"d{i}"] = node
    return {"$defs": defs, "$ref": f"#/$defs/d{n - 1}"}


def union(rng: random.Random) -> JSON:
    branches = []
    for i in range(rng.randint(8, 40)):
        branch = _object(rng, 2, rng.randint(2, 8))
        branch["properties"]["type"] = {"const": f"kind_{i}"}
        branch["required"] = ["type", *branch["required"]]
        branches.append(branch)
    return {"oneOf": branches}


def big_enum(rng: random.Random) -> JSON:
    return {"type": "object", "properties": {
        "country": {"enum": [f"Country number {j}" for j in range(rng.randint(200, 1500))]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}$"}}, "required": ["country"]}


def tools_like(rng: random.Random) -> JSON:
    props: dict[str, JSON] = {}
    for j in range(rng.randint(5, 30)):
        props[f"param_{j}"] = rng.choice([
            {"type": "integer", "format": "int32"}, {"type": "string", "format": "uri"},
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "string"}},
            {"type": "number", "exclusiveMinimum": 0}, _leaf(rng, 4)])
    return {"type": "object", "properties": props, "required": sorted(props)[:3],
            "additionalProperties": rng.choice([False, True])}


SHAPES: dict[str, Callable[[random.Random], JSON]] = {
    "kubernetes-like": kubernetes_like, "wide": wide, "defs-and-refs": defs_and_refs,
    "union": union, "big-enum": big_enum, "tools-like": tools_like,
}


def _pct(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--llama", action="store_true", help="also time llama.cpp's grammar build")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    corpus = [(name, SHAPES[name](rng)) for name in
              (rng.choice(sorted(SHAPES)) for _ in range(args.n))]
    # the corpus (millions of objects) is no garbage: out of the collector's scans, so that a
    # full collection during a timed conversion does not walk the bench's own 300 schemas
    # (one such collection took 83 ms here)
    gc.collect()
    gc.freeze()
    times: list[float] = []
    sizes: list[int] = []
    parses: list[float] = []
    failures: list[str] = []
    schema_bytes: list[int] = []
    by_size: dict[str, list[float]] = {"< 8 KiB": [], "8-32 KiB": [], "32-64 KiB": [],
                                       ">= 64 KiB": []}
    for name, schema in corpus:
        _clear_cache()
        schema_bytes.append(len(json.dumps(schema)))
        start = time.perf_counter()
        try:
            result = convert(schema)
        except SchemaError as exc:
            failures.append(f"{name}: {exc}")
            continue
        times.append((time.perf_counter() - start) * 1000)
        kib = schema_bytes[-1] / 1024
        bucket = ("< 8 KiB" if kib < 8 else "8-32 KiB" if kib < 32 else "32-64 KiB" if kib < 64
                  else ">= 64 KiB")
        by_size[bucket].append(times[-1])
        sizes.append(len(result.gbnf))
        start = time.perf_counter()
        try:
            parse_gbnf(result.gbnf)
            parses.append((time.perf_counter() - start) * 1000)
        except GbnfSyntaxError as exc:
            failures.append(f"{name}: parse: {str(exc)[:100]}")
    print(f"{len(corpus)} schemas, {statistics.median(schema_bytes) / 1024:.1f} KiB median, "
          f"{max(schema_bytes) / 1024:.1f} KiB max; failures: {len(failures)}")
    for f in failures[:10]:
        print("  ", f)
    print(f"conversion ms: p50 {_pct(times, .5):.1f}  p99 {_pct(times, .99):.1f}  "
          f"max {max(times):.1f}")
    for bucket, values in by_size.items():
        if values:
            print(f"  schemas {bucket}: {len(values)}, conversion p50 {_pct(values, .5):.1f} ms, "
                  f"p99 {_pct(values, .99):.1f} ms")
    print(f"GBNF KiB:      p50 {_pct(sizes, .5) / 1024:.1f}  p99 {_pct(sizes, .99) / 1024:.1f}  "
          f"max {max(sizes) / 1024:.1f}  (limit 128)")
    print(f"parse_gbnf ms: p50 {_pct(parses, .5):.1f}  p99 {_pct(parses, .99):.1f}  "
          f"max {max(parses):.1f}")
    if args.llama:
        _llama_build(corpus)
    _mode_costs(corpus)


def _llama_build(corpus: list[tuple[str, JSON]]) -> None:
    import llama_cpp.llama_cpp as C

    from app.engine.model import Model, default_model_path

    model = Model(default_model_path())
    builds = []
    for _name, schema in corpus:
        try:
            gbnf = convert(schema).gbnf
        except SchemaError:
            continue
        start = time.perf_counter()
        g = C.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
        builds.append((time.perf_counter() - start) * 1000)
        if not g:
            print("llama.cpp refused a grammar")
        else:
            C.llama_sampler_free(g)
    model.close()
    print(f"llama.cpp grammar build ms: p50 {_pct(builds, .5):.1f}  p99 {_pct(builds, .99):.1f}")


def _mode_costs(corpus: list[tuple[str, JSON]]) -> None:
    """Grammar size of the modes relative to the default, over the whole corpus."""
    def total(**kw: Any) -> int:
        _clear_cache()
        out = 0
        for _name, schema in corpus:
            with contextlib.suppress(SchemaError):
                out += len(convert(schema, **kw).gbnf)
        return out

    if not hasattr(containers, "ANY_ORDER_MAX"):
        return
    default = total()
    strict = total(strict=True)
    saved = containers.ANY_ORDER_MAX
    containers.ANY_ORDER_MAX = 0
    try:
        declared = total()
    finally:
        containers.ANY_ORDER_MAX = saved
    print(f"size vs default: strict (closed objects) {strict / default:.2f}, declared order "
          f"only {declared / default:.2f} (any order up to {saved} properties costs "
          f"{default / declared - 1:+.0%})")


if __name__ == "__main__":
    main()
