"""Converter output in llama.cpp itself: every grammar loads (``llama_sampler_init_grammar``)
and llama.cpp's own matcher admits each valid instance token by token, then the end.

Runs in-process on the embedded model's vocabulary. A token is only ever accepted after
llama.cpp's grammar left its logit finite (accepting a refused token would abort)."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C
import numpy as np
import pytest

from app.engine.model import Model, default_model_path
from grammar import convert, parse_gbnf
from tests.grammar.test_real_world import REAL_WORLD

CASES = sorted((Path(__file__).parent.parent / "grammar" / "cases").glob("*.json"))
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    m = Model(default_model_path())
    yield m
    m.close()


def _allowed(grammar: Any, token: int) -> bool:
    cand = np.zeros(1, dtype=_TOKEN_DATA)
    cand[0] = (token, 0.0, 0.0)
    arr = C.llama_token_data_array(data=ctypes.cast(cand.ctypes.data, C.llama_token_data_p),
                                   size=1, selected=-1, sorted=False)
    C.llama_sampler_apply(grammar, ctypes.byref(arr))
    return bool(np.isfinite(cand[0]["logit"]))


def _admits(model: Model, gbnf: str, text: str) -> bool:
    grammar = C.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    assert grammar, "llama.cpp refused the grammar"
    try:
        for token in model.tokenize(text, add_special=False):
            if not _allowed(grammar, token):
                return False
            C.llama_sampler_accept(grammar, token)
        return _allowed(grammar, C.llama_vocab_eos(model.vocab))
    finally:
        C.llama_sampler_free(grammar)


def _instances() -> Iterator[tuple[str, Any, str, bool]]:
    """(case, schema, text, spec): the cases' texts in both shapes (``spec_only`` ones in the
    spec-faithful shape), the real-world instances in the spec-faithful shape."""
    for path in CASES:
        case = json.loads(path.read_text(encoding="utf-8"))
        for text in case["accept"][:4]:
            yield path.stem, case["schema"], text, False
            yield path.stem, case["schema"], text, True
        for text in case.get("spec_only", [])[:2]:
            yield path.stem, case["schema"], text, True
    for name, schema, valid, _invalid in REAL_WORLD:
        for value in valid[:3]:
            yield name, schema, json.dumps(value), True


INSTANCES = list(_instances())


@pytest.mark.parametrize(("name", "schema", "text", "spec"), INSTANCES,
                         ids=[f"{n}-{i}" for i, (n, _, _, _) in enumerate(INSTANCES)])
def test_llama_cpp_loads_the_grammar_and_admits_valid_instances(
        model: Model, name: str, schema: Any, text: str, spec: bool) -> None:
    gbnf = convert(schema, spec=spec).gbnf
    parse_gbnf(gbnf)
    assert _admits(model, gbnf, text), f"llama.cpp's matcher refused {text[:120]!r}"


def test_llama_cpp_stops_an_invalid_instance(model: Model) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}},
              "required": ["n"]}
    gbnf = convert(schema).gbnf
    assert _admits(model, gbnf, '{"n": 7}')
    assert not _admits(model, gbnf, '{"n": 12}')
    assert not _admits(model, gbnf, '{"m": 1}')
