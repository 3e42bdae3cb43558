"""The host-memory prompt cache (--cache-ram) on a real server: a request whose prompt starts like
a saved state, or like another slot's cells, evaluates only the rest; /metrics counts the hits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.helpers import TIMEOUT, metric_value
from tests.serverproc import ServerProcess, running_server

SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer in one short sentence and cite section {i}." for i in range(24))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "2", "--metrics") as srv:
        yield srv


def complete(base: str, prompt: str, n_predict: int = 2) -> dict[str, object]:
    resp = httpx.post(base + "/completion", json={"prompt": prompt, "n_predict": n_predict,
                                                  "temperature": 0}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def n_tokens(base: str, text: str) -> int:
    return len(httpx.post(base + "/tokenize", json={"content": text}, timeout=TIMEOUT)
               .json()["tokens"])


def metric(base: str, name: str) -> float:
    return metric_value(httpx.get(base + "/metrics", timeout=TIMEOUT).text, f"sluice:{name}")


def test_a_busy_slots_prefix_serves_a_second_request(server: ServerProcess) -> None:
    base = server.base_url
    prefix = n_tokens(base, SYSTEM)
    hits = metric(base, "prompt_cache_hits_total")
    body = {"prompt": SYSTEM + "\nQ: list every rule.\nA:", "n_predict": 400, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", base + "/completion", json=body, timeout=TIMEOUT) as busy:
        lines = busy.iter_lines()  # kept: dropping the iterator would close the stream
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:]).get("content"):
                break  # generating: its slot is busy
        slots = httpx.get(base + "/slots", timeout=TIMEOUT).json()
        assert [s["is_processing"] for s in slots] == [True, False]
        second = complete(base, SYSTEM + "\nQ: what is rule 3?\nA:")
    assert second["id_slot"] == 1
    assert second["tokens_cached"] >= prefix - 2  # only the question was evaluated
    assert metric(base, "prompt_cache_hits_total") == hits + 1


def test_a_state_evicted_by_other_conversations_is_restored_from_ram(server: ServerProcess) -> None:
    base = server.base_url
    prefix = n_tokens(base, SYSTEM)
    complete(base, SYSTEM + "\nQ: what is rule 1?\nA:")
    for i in range(3):  # three other long conversations go through both slots
        complete(base, f"Conversation {i}. " + SYSTEM.replace("Rule", f"Law{i}"))
    assert metric(base, "prompt_cache_entries") >= 1
    again = complete(base, SYSTEM + "\nQ: what is rule 2?\nA:")
    assert again["tokens_cached"] >= prefix - 2
    timings = again["timings"]
    assert isinstance(timings, dict)
    assert timings["prompt_n"] < 20


def test_same_answer_from_a_restored_state(server: ServerProcess) -> None:
    """Greedy output does not depend on where the prefix's KV came from."""
    base = server.base_url
    prompt = SYSTEM + "\nQ: which rule mentions section 5?\nA:"
    for i in range(2):  # both slots now hold other conversations
        complete(base, f"Other {i}. " + SYSTEM.replace("Rule", f"Item{i}"))
    hits = metric(base, "prompt_cache_hits_total")
    restored = complete(base, prompt, n_predict=16)
    assert metric(base, "prompt_cache_hits_total") == hits + 1  # the prefix came from RAM
    assert restored["tokens_cached"] > 0
    fresh = httpx.post(base + "/completion", json={"prompt": prompt, "n_predict": 16,
                                                   "temperature": 0, "cache_prompt": False},
                       timeout=TIMEOUT).json()
    assert fresh["tokens_cached"] == 0
    assert restored["content"] == fresh["content"]


def _streamed(base: str, body: dict[str, object]) -> str:
    text = ""
    with httpx.stream("POST", base + "/completion", json={**body, "stream": True},
                      timeout=TIMEOUT) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                text += json.loads(line[6:]).get("content", "")
    return text


def test_a_seeded_reply_is_the_same_streamed_or_not_with_the_cache_warm_or_cold(
        server: ServerProcess) -> None:
    """llama.cpp's test_completion_stream_vs_non_stream, and more: the first of these requests
    evaluates the prompt from the start (``cache_prompt: false``), the others find it cached;
    streamed or not, the seeded reply is the same text."""
    base = server.base_url
    for prompt in ("I believe the meaning of life is",
                   "Once upon a time, in a kingdom by the sea, there lived a"):
        body = {"prompt": prompt, "n_predict": 16, "temperature": 0.8, "seed": 42,
                "id_slot": 0}
        texts = [httpx.post(base + "/completion", json={**body, "cache_prompt": False},
                            timeout=TIMEOUT).json()["content"],
                 _streamed(base, body),
                 httpx.post(base + "/completion", json=body, timeout=TIMEOUT).json()["content"],
                 _streamed(base, body)]
        assert len(set(texts)) == 1, texts
        assert texts[0]
