"""LoRA adapters on a real server: ``--lora``, ``GET``/``POST /lora-adapters`` and a request's
own ``lora``, with different scales decoding side by side.

No adapter for the embedded models is published where this machine can reach, so the test
writes one with llama.cpp's own ``gguf`` package: rank-8 ``lora_a``/``lora_b`` pairs for every
attention query of SmolLM2-135M, random but seeded. It is not trained to do anything; it moves
the logits, which is what a test of the plumbing needs: at scale 0 the model answers as without
the adapter, at scale 1 it answers otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from tests.integration.helpers import TIMEOUT
from tests.serverproc import ROOT, running_server

PROMPT = "The capital of France is"


def write_adapter(model: Path, out: Path, rank: int = 8) -> None:
    import gguf

    reader = gguf.GGUFReader(str(model))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    rng = np.random.default_rng(7)
    for tensor in reader.tensors:
        if not tensor.name.endswith("attn_q.weight"):
            continue
        n_in, n_out = (int(x) for x in tensor.shape[:2])  # ggml's order: ne0 = inputs
        base = tensor.name.removesuffix(".weight")
        writer.add_tensor(f"{base}.weight.lora_a",
                          rng.normal(0, 0.3, (rank, n_in)).astype(np.float32))
        writer.add_tensor(f"{base}.weight.lora_b",
                          rng.normal(0, 0.3, (n_out, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def adapter() -> Path:
    from app.engine.model import EMBEDDED

    path = ROOT / "test-artifacts" / "lora-smollm2.gguf"
    path.parent.mkdir(exist_ok=True)
    write_adapter(EMBEDDED["smollm2-135m-instruct"](), path)
    return path


@pytest.fixture(scope="module")
def base(adapter: Path) -> Iterator[str]:
    with running_server("--model", "smollm2-135m-instruct", "--parallel", "2",
                        "--lora", str(adapter)) as srv:
        yield srv.base_url


def complete(base: str, **extra: Any) -> str:
    resp = httpx.post(base + "/completion", timeout=TIMEOUT, json={
        "prompt": PROMPT, "n_predict": 12, "temperature": 0, "cache_prompt": False, **extra})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["content"])


def test_the_adapter_is_listed_and_changes_the_reply(base: str, adapter: Path) -> None:
    listed = httpx.get(base + "/lora-adapters", timeout=TIMEOUT).json()
    assert listed == [{"id": 0, "path": str(adapter), "scale": 1.0}]
    applied = complete(base)
    off = complete(base, lora=[{"id": 0, "scale": 0.0}])
    assert applied != off
    # a request's own scale 0 is the model without the adapter: the server-wide scale 0 too
    assert httpx.post(base + "/lora-adapters", json=[{"id": 0, "scale": 0.0}],
                      timeout=TIMEOUT).json() == {"success": True}
    try:
        assert httpx.get(base + "/lora-adapters", timeout=TIMEOUT).json()[0]["scale"] == 0.0
        assert complete(base) == off
        assert complete(base, lora=[{"id": 0, "scale": 1.0}]) == applied
    finally:
        httpx.post(base + "/lora-adapters", json=[{"id": 0, "scale": 1.0}], timeout=TIMEOUT)
    out = httpx.post(base + "/completion", timeout=TIMEOUT, json={
        "prompt": PROMPT, "n_predict": 1, "lora": [{"id": 0, "scale": 0.5}]}).json()
    assert out["generation_settings"]["lora"] == [{"id": 0, "scale": 0.5}]


async def test_different_scales_decode_side_by_side(base: str) -> None:
    alone = {scale: complete(base, lora=[{"id": 0, "scale": scale}], n_predict=40)
             for scale in (0.0, 1.0)}
    results: dict[int, str] = {}

    async def run(i: int, scale: float) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            resp = await client.post(base + "/completion", json={
                "prompt": PROMPT, "n_predict": 40, "temperature": 0, "cache_prompt": False,
                "lora": [{"id": 0, "scale": scale}]})
            results[i] = resp.json()["content"]

    async with trio.open_nursery() as nursery:
        for i, scale in enumerate((0.0, 1.0)):
            nursery.start_soon(run, i, scale)
    # each ran with its own adapters while both slots were busy (the steps took turns, so
    # each decoded alone, as when it ran by itself: the texts are comparable)
    assert [results[0], results[1]] == [alone[0.0], alone[1.0]]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/completion", {"prompt": "x", "lora": [{"id": 3, "scale": 1.0}]}, "lora"),
    ("/lora-adapters", [{"id": 1, "scale": 1.0}], "id"),
    ("/lora-adapters", [{"id": 0, "scale": "high"}], "[0].scale"),
    ("/lora-adapters", {"id": 0}, "JSON array"),
])
def test_bad_adapter_ids_and_scales_are_400s(base: str, path: str, body: Any,
                                              field: str) -> None:
    resp = httpx.post(base + path, json=body, timeout=TIMEOUT)
    assert resp.status_code == 400, resp.text
    assert field in resp.json()["error"]["message"]


def test_an_adapter_for_another_model_ends_startup_with_one_line(adapter: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "app", "--port", "0", "--lora", str(adapter)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("sluice: error: could not load LoRA adapter"), result.stderr
