"""Every route fuzzed from the server's own OpenAPI document (schemathesis + hypothesis).

Bounded: a few dozen generated requests per operation, each generation cut at
``--timeout``. What must hold for every one: no 500 (nor 502/504), the process
stays up, and every 4xx/5xx on a JSON route is in the error shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.api.openapi import document
from tests.serverproc import ServerProcess, models_dir, running_server

EXAMPLES = 15
#: documented 501: the default model has no fill-in-the-middle tokens
# /infill: no FIM tokens; POST /props: no --props; /rerank: no --reranking
EXPECTED_501 = {"/infill", "/props", "/rerank", "/v1/rerank"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--models-dir", str(models_dir("models-fuzz", "only.gguf")),
                        "--model", "only.gguf", "--embedding",
                        "--parallel", "2", "--ctx-size", "2048", "--timeout", "1") as srv:
        yield srv


def _operations() -> list[Any]:
    schema = schemathesis.openapi.from_dict(document())
    return [result.ok() for result in schema.get_all_operations()]


OPERATIONS = _operations()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_fuzzed_requests_never_break_the_server(server: ServerProcess, operation: Any) -> None:
    seen: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(case=operation.as_strategy(), raw=st.booleans())
    def run(case: Any, raw: bool) -> None:
        response = case.call(base_url=server.base_url, timeout=30)
        status = response.status_code
        seen.append(status)
        where = f"{operation.method.upper()} {operation.path} -> {status}: {response.text[:300]}"
        assert status != 500, where
        assert status < 500 or status == 503 or (status == 501 and operation.path in EXPECTED_501), where
        if status >= 400 and operation.path.startswith("/v1/messages"):
            body = response.json()  # Anthropic's error shape
            assert body["type"] == "error", where
            assert isinstance(body["error"]["type"], str), where
            assert isinstance(body["error"]["message"], str), where
        elif status >= 400 and operation.path in {"/api/generate", "/api/chat", "/api/tags",
                                                  "/api/ps", "/api/show", "/api/version"}:
            assert isinstance(response.json()["error"], str), where  # Ollama's error shape
        elif status >= 400 and operation.path.startswith(("/api/v1/", "/api/extra/")):
            detail = response.json()["detail"]  # KoboldAI's error shape
            assert isinstance(detail["msg"], str), where
            assert isinstance(detail["type"], str), where
        elif status >= 400 and operation.path not in ("/predict", "/chat"):
            error = response.json()["error"]
            assert error["code"] == status, where
            assert isinstance(error["message"], str), where
            assert isinstance(error["type"], str), where
        assert server.proc.poll() is None, f"server died after {where}"

    run()
    assert seen  # hypothesis may stop early on a small input space
    health = httpx.get(server.base_url + "/health", timeout=10)
    assert health.status_code == 200
    if operation.path == "/models/unload":  # a fuzzed name may have been the loaded model
        httpx.post(server.base_url + "/models/load", json={"model": "only.gguf"}, timeout=60)
