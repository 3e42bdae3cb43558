"""``/infill`` on a real server with fill-in-the-middle tokens.

Neither embedded model has FIM tokens, so the test marks five of SmolLM2's special tokens as
FIM prefix, suffix, middle, repository and file separator in a copy of its GGUF (llama.cpp's
``gguf-new-metadata``). The model was not trained on them, so its words mean nothing here; what
is checked is the prompt the server builds (llama.cpp's layout, counted token by token) and that
the route completes, streamed and not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ROOT, running_server

PRE, SUF, MID, REP, SEP = 7, 8, 9, 3, 5


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    from app.engine.model import EMBEDDED

    out = ROOT / "test-artifacts" / "smollm2-fim.gguf"
    out.parent.mkdir(exist_ok=True)
    ids = (("fim_pre", PRE), ("fim_suf", SUF), ("fim_mid", MID), ("fim_rep", REP),
           ("fim_sep", SEP))
    args = [a for name, i in ids for a in ("--special-token-by-id", name, str(i))]
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", *args, "--force",
                    str(EMBEDDED["smollm2-135m-instruct"]()), str(out)],
                   check=True, capture_output=True, timeout=300)
    with running_server("--model", str(out), "--parallel", "1") as srv:
        yield srv.base_url


def ids(base: str, text: str) -> list[int]:
    out: list[int] = httpx.post(base + "/tokenize", json={"content": text},
                                timeout=TIMEOUT).json()["tokens"]
    return out


BODY = {"input_extra": [{"filename": "llama.h", "text": "int llama_n_threads();\n"}],
        "input_prefix": "int main() {\n", "prompt": "    int n = llama_",
        "input_suffix": "}\n", "n_predict": 4, "temperature": 0}


def test_infill_builds_llama_cpps_prompt(base: str) -> None:
    out = httpx.post(base + "/infill", json=BODY, timeout=TIMEOUT).json()
    expected = [REP, *ids(base, "myproject\n"), SEP, *ids(base, "llama.h\n"),
                *ids(base, "int llama_n_threads();\n"), SEP, *ids(base, "filename\n"),
                PRE, *ids(base, "int main() {\n"), *ids(base, "    int n = llama_"),
                SUF, *ids(base, "}\n"), MID]
    assert out["tokens_evaluated"] == len(expected)  # SmolLM2 adds no BOS
    assert out["tokens_predicted"] == 4
    streamed: list[dict[str, Any]] = []
    with httpx.stream("POST", base + "/infill", json={**BODY, "stream": True},
                      timeout=TIMEOUT) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                streamed.append(json.loads(line[6:]))
    assert streamed[-1]["stop"] is True
    assert "".join(e["content"] for e in streamed[:-1]) == out["content"]


@pytest.mark.parametrize("extra", [{}, {"filename": "ok"}, {"filename": 123, "text": "abc"},
                                   {"filename": "a", "text": 456}])
def test_bad_input_extra_is_400(base: str, extra: dict[str, Any]) -> None:
    resp = httpx.post(base + "/infill", json={**BODY, "input_extra": [extra]}, timeout=TIMEOUT)
    assert resp.status_code == 400
    assert "input_extra" in resp.json()["error"]["message"]
