"""With the real model: narrowing the grammar's full passes changes no token.

Each case generates twice from the same prompt and seed, once with the Python-side filter
(app/engine/grammar_filter.py) and once with llama.cpp masking the whole vocabulary, and
compares the tokens. Runs in-process on the engine's own classes, no server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.completion import SamplingParams
from app.engine.context import Context, ContextConfig
from app.engine.model import Model, default_model_path
from app.engine.sampling import Sampler
from grammar import convert, parse_gbnf
from grammar.tools import ToolSchema, tool_calls_gbnf

TOOL = tool_calls_gbnf([
    ToolSchema("get_weather", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}),
    ToolSchema("search_flights", {"type": "object", "properties": {
        "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "passengers": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["origin", "passengers"]})],
    mode="required", parallel=False).gbnf
RECORD = convert({"type": "object", "properties": {
    "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$"},
    "phone": {"type": "string", "pattern": "^\\+[0-9]{1,3} [0-9]{3} [0-9]{4}$"},
    "names": {"type": "array", "items": {"enum": ["Ada Lovelace", "Alan Turing", "Grace Hopper"]},
              "minItems": 2, "maxItems": 2}},
    "required": ["id", "phone", "names"]}).gbnf


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[Model, Context]]:
    model = Model(default_model_path())
    ctx = Context(model, ContextConfig(n_ctx=1024, n_batch=256, n_seq_max=1))
    yield model, ctx
    ctx.close()
    model.close()


def generate(model: Model, ctx: Context, gbnf: str, params: SamplingParams, *, narrow: bool,
             n: int = 48) -> tuple[list[int], Sampler]:
    prompt = model.tokenize("Assistant, answer in JSON:\n")
    ctx.seq_clear(0)
    ctx.clear_batch()
    for i, t in enumerate(prompt):
        ctx.add(t, i, 0, i == len(prompt) - 1)
    assert ctx.decode() == 0
    sampler = Sampler(model, params, gbnf, parse_gbnf(gbnf) if narrow else None)
    out: list[int] = []
    row, pos = len(prompt) - 1, len(prompt)
    for _ in range(n):
        step = sampler.sample(ctx.ptr, row)
        if step is None:
            step = sampler.resolve()
        if step.token < 0 or step.token in model.eog_ids:
            break
        out.append(step.token)
        ctx.clear_batch()
        ctx.add(step.token, pos, 0, True)
        assert ctx.decode() == 0
        row, pos = 0, pos + 1
    sampler.close()
    return out, sampler


@pytest.mark.parametrize("gbnf", [TOOL, RECORD], ids=["tool call", "pattern record"])
@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(seed=1),
                                    SamplingParams(seed=2, top_k=10, temperature=1.2)],
                         ids=["greedy", "seed 1", "seed 2 hot"])
def test_narrowed_passes_give_the_same_tokens(engine: tuple[Model, Context], gbnf: str,
                                              params: SamplingParams) -> None:
    model, ctx = engine
    narrowed, with_filter = generate(model, ctx, gbnf, params, narrow=True)
    full, without = generate(model, ctx, gbnf, params, narrow=False)
    assert narrowed == full
    assert with_filter.rejections == without.rejections > 0
    assert with_filter.narrowed_passes > 0
    assert with_filter.full_passes < without.full_passes or without.full_passes == 0
