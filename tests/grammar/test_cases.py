"""Golden and table tests: each case file holds a schema, texts its grammar must
accept and texts it must reject; the expected GBNF (the generation shape, the default)
sits beside it (``.gbnf``). ``spec_only`` texts are valid but only the spec-faithful
shape admits them (members out of declared order, undeclared members, a non-object for
an empty schema): the generation shape must refuse them.

Set SLUICE_UPDATE_GOLDEN=1 to rewrite the ``.gbnf`` files after a deliberate change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from grammar import Recognizer, convert, parse_gbnf, validate

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_gbnf(path: Path) -> None:
    gbnf = convert(load(path)["schema"]).gbnf
    golden = path.with_suffix(".gbnf")
    if os.environ.get("SLUICE_UPDATE_GOLDEN") == "1" or not golden.exists():
        golden.write_text(gbnf, encoding="utf-8")
    assert gbnf == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_accepts_and_rejects(path: Path) -> None:
    case = load(path)
    generation = Recognizer(parse_gbnf(convert(case["schema"]).gbnf))
    spec = Recognizer(parse_gbnf(convert(case["schema"], spec=True).gbnf))
    for text in case["accept"]:
        assert generation.accepts(text), f"should accept: {text[:120]}"
        assert spec.accepts(text), f"spec shape should accept: {text[:120]}"
        assert validate(text, case["schema"]).valid, f"case is invalid for its own schema: {text[:80]}"
    for text in case.get("spec_only", []):
        assert spec.accepts(text), f"spec shape should accept: {text[:120]}"
        assert not generation.accepts(text), f"generation shape should refuse: {text[:120]}"
        assert validate(text, case["schema"]).valid, f"case is invalid for its own schema: {text[:80]}"
    for text in case["reject"]:
        assert not generation.accepts(text), f"should reject: {text[:120]}"
        assert not spec.accepts(text), f"spec shape should reject: {text[:120]}"


def test_conversion_is_deterministic() -> None:
    for path in CASES:
        schema = load(path)["schema"]
        assert convert(schema).gbnf == convert(json.loads(json.dumps(schema))).gbnf
