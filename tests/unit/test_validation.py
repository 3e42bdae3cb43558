"""Request bodies: schema validation names the field; typed parameters."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.errors import InvalidRequest
from app.requests import Defaults, native_request
from app.validation import parse_json_body, validate


def params(body: dict[str, Any]) -> Any:
    return native_request(validate("completion", body), Defaults())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "n_predict": -2}, "n_predict"),
        ({"prompt": "x", "n_predict": 1.5}, "n_predict"),
        ({"prompt": "x", "mirostat": 3}, "mirostat"),
        ({"prompt": "x", "seed": -5}, "seed"),
        ({"prompt": "x", "stop": ["a", 3]}, "stop"),
        ({"prompt": "x", "samplers": ["top_k", "adaptive_p"]}, "samplers[1]"),
        ({"prompt": "x", "logit_bias": [[1]]}, "logit_bias"),
        ({"prompt": "x", "n_probs": 1000}, "n_probs"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "tfs_z": 0.9}, "tfs_z"),
        ({"prompt": [1, -3]}, "prompt"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        params(body)
    assert info.value.status == 400
    assert field in info.value.message


def test_malformed_json_and_non_objects() -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        parse_json_body(b'{"prompt": ')
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_json_body(b"[1, 2]")
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        parse_json_body(b"\xff\xfe")


def test_grammar_and_json_schema_together_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="together"):
        params({"prompt": "x", "grammar": 'root ::= "a"', "json_schema": {}})


def test_defaults_and_conversions() -> None:
    p = params({"prompt": "hi", "stop": "END", "logit_bias": {"15": -1.5, "hello": False}})
    assert p.prompt == ("hi",)
    assert p.stops == ("END",)
    assert p.n_predict == -1
    assert p.logit_bias == ((15, -1.5), ("hello", -math.inf))
    assert p.cache_prompt is True


def test_mixed_prompt_and_max_tokens_alias() -> None:
    p = params({"prompt": ["a", 5, "b"], "max_tokens": 7, "logit_bias": [[3, 2.0], ["x", False]]})
    assert p.prompt == ("a", 5, "b")
    assert p.n_predict == 7
    assert p.logit_bias == ((3, 2.0), ("x", -math.inf))


def test_request_parsing_imports_without_the_engine() -> None:
    # llama_cpp made unimportable: parsing a body into a typed request must not need it
    code = ("import sys; sys.modules['llama_cpp'] = None\n"
            "import app.requests, app.completion, app.validation\n"
            "from app.requests import Defaults, native_request\n"
            "from app.validation import validate\n"
            "r = native_request(validate('completion', {'prompt': 'x', 'temperature': 0}), Defaults())\n"
            "assert r.sampling.greedy and 'llama_cpp.llama_cpp' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert done.returncode == 0, done.stderr
