"""/completion and friends against the real default model through a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio

from tests.integration.helpers import TIMEOUT, metric_value, slots, stream_events, wait_until
from tests.serverproc import ServerProcess, running_server

LONG = {"prompt": "Once upon a time", "n_predict": 4000, "ignore_eos": True, "temperature": 0.8}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "4", "--ctx-size", "8192", "--metrics") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


async def complete(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await client.post("/completion", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def metric(client: httpx.AsyncClient, name: str) -> float:
    return metric_value((await client.get("/metrics")).text, name)


async def all_idle(client: httpx.AsyncClient) -> bool:
    return not any(s["is_processing"] for s in await slots(client, ""))


async def test_health_props_slots(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    props = (await client.get("/props")).json()
    assert props["total_slots"] == 4
    assert props["model_path"].endswith(".gguf")
    s = await slots(client, "")
    assert [x["id"] for x in s] == [0, 1, 2, 3]
    assert all(x["n_ctx"] == 2048 for x in s)


async def test_non_streamed_completion_shape(client: httpx.AsyncClient) -> None:
    out = await complete(client, prompt="The capital of France is", n_predict=8, temperature=0)
    assert out["stop"] is True
    assert out["tokens"] == []  # as llama.cpp: the ids only with return_tokens
    out = await complete(client, prompt="The capital of France is", n_predict=8, temperature=0,
                         return_tokens=True)
    assert out["tokens_predicted"] == 8 == len(out["tokens"])
    assert out["stop_type"] == "limit"
    assert out["stopped_limit"] is True
    assert out["tokens_evaluated"] == 6
    assert out["content"].strip()
    assert out["timings"]["predicted_n"] == 8
    assert out["generation_settings"]["temperature"] == 0


async def test_streamed_text_equals_non_streamed_for_the_same_seed(client: httpx.AsyncClient) -> None:
    body = {
        "prompt": "Write a short poem about rivers.\n",
        "n_predict": 48,
        "seed": 1234,
        "temperature": 0.9,
        "cache_prompt": False,
        "return_tokens": True,
    }
    whole = await complete(client, **body)
    events = await stream_events(client, "/completion", body)
    partials, final = events[:-1], events[-1]
    assert all(e["stop"] is False for e in partials)
    assert final["stop"] is True
    streamed = "".join(e["content"] for e in partials)
    assert streamed == whole["content"]
    assert [t for e in partials for t in e["tokens"]] == whole["tokens"]
    # as llama.cpp's: the final event repeats nothing (a client appending every event's
    # content shows the answer once), and carries the same fields otherwise
    assert final["content"] == ""
    assert final["tokens"] == []
    assert set(final) == set(whole)
    assert all(e["index"] == 0 for e in events)


async def test_four_concurrent_streams_all_progress(client: httpx.AsyncClient) -> None:
    """Four streams at temperature 0 run together on four slots.

    Their texts are not compared with solo runs: this llama.cpp build's CPU
    kernels take other arithmetic paths for other batch row counts (4-row
    repacked GEMM vs GEMV), so logits move by up to ~1.0 and a greedy output can
    leave its solo run at a near-tie. bench/bench_server.py measures how often
    (README, "Determinism"); the scheduler's own row placement is covered by
    tests/unit/test_scheduler.py.
    """
    body = {
        "prompt": "The history of the printing press",
        "n_predict": 40,
        "temperature": 0,
        "ignore_eos": True,
    }
    progress: dict[int, list[float]] = {i: [] for i in range(4)}
    texts: dict[int, str] = {}
    slots_used: set[int] = set()

    async def one(i: int) -> None:
        text = ""
        async with client.stream("POST", "/completion", json={**body, "stream": True}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if not event["stop"]:
                        progress[i].append(trio.current_time())
                        text += event["content"]
                    else:
                        slots_used.add(event["id_slot"])
        texts[i] = text

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
    assert slots_used == {0, 1, 2, 3}
    first_finish = min(p[-1] for p in progress.values())
    # every stream had produced tokens before the first one finished: they ran together
    assert all(len(p) == 40 and p[0] < first_finish for p in progress.values())
    assert all(text.strip() for text in texts.values())


async def test_disconnect_mid_stream_frees_slot_and_stops_generation(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/completion", json={**LONG, "stream": True}) as resp:
        n = 0
        async with aclosing(resp.aiter_lines()) as lines:
            async for line in lines:
                if line.startswith("data: "):
                    n += 1
                    if n == 5:
                        break
    waited = await wait_until(lambda: all_idle(client), timeout_s=1.0)
    assert waited < 1.0
    decoded = [s["n_decoded"] for s in await slots(client, "")]
    await trio.sleep(0.3)
    assert [s["n_decoded"] for s in await slots(client, "")] == decoded


async def test_disconnect_from_non_streaming_request_frees_slot(client: httpx.AsyncClient) -> None:
    with trio.move_on_after(0.8):
        await client.post("/completion", json=LONG)
    waited = await wait_until(lambda: all_idle(client), timeout_s=1.0)
    assert waited < 1.0
    decoded = [s["n_decoded"] for s in await slots(client, "")]
    assert max(decoded) > 0
    await trio.sleep(0.3)
    assert [s["n_decoded"] for s in await slots(client, "")] == decoded


async def test_abort_by_id_ends_stream_with_final_event(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/completion", json={**LONG, "stream": True}) as resp:
        job_id = int(resp.headers["x-request-id"])
        events = []
        async with aclosing(resp.aiter_lines()) as lines:
            async for line in lines:
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 3:
                        r = await client.post(f"/completion/{job_id}/abort")
                        assert r.json() == {"id": job_id, "aborted": True}
    final = events[-1]
    assert final["stop"] is True
    assert final["aborted"] is True
    assert final["id"] == job_id
    assert final["content"] == ""  # everything was in the partials
    assert "".join(e["content"] for e in events[:-1])
    await wait_until(lambda: all_idle(client), timeout_s=1.0)
    assert (await client.post(f"/completion/{job_id}/abort")).status_code == 404


async def test_abort_non_streaming_returns_partial_result(client: httpx.AsyncClient) -> None:
    result: dict[str, Any] = {}

    async def run() -> None:
        resp = await client.post("/completion", json=LONG)
        result.update(resp.json())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)

        async def busy() -> bool:
            return any(s["is_processing"] and s["n_decoded"] > 3 for s in await slots(client, ""))

        await wait_until(busy, timeout_s=10)
        slot = next(s for s in await slots(client, "") if s["is_processing"])
        # llama.cpp's slot object while it runs: the request's params, next_token, prompt
        assert slot["params"]["n_predict"] == LONG["n_predict"]
        assert slot["params"]["temperature"] == LONG["temperature"]
        assert slot["next_token"][0]["n_remain"] == LONG["n_predict"] - slot["n_decoded"]
        assert slot["prompt"] == LONG["prompt"]
        job = slot["id_task"]
        assert (await client.post(f"/completion/{job}/abort")).status_code == 200
    assert result["aborted"] is True
    assert result["tokens_predicted"] > 3


async def test_queued_request_whose_client_left_never_runs(client: httpx.AsyncClient) -> None:
    queued_id: list[int] = []
    started_before = await metric(client, "sluice:requests_started_total")
    dropped_before = await metric(client, "sluice:requests_dropped_queued_total")

    async def hog(i: int, started: trio.Event) -> None:
        async with client.stream("POST", "/completion", json={**LONG, "stream": True}) as resp:
            started.set()
            async with aclosing(resp.aiter_lines()) as lines:
                async for _ in lines:
                    pass

    async with trio.open_nursery() as nursery:
        for i in range(4):
            ev = trio.Event()
            nursery.start_soon(hog, i, ev)
            await ev.wait()

        async def full() -> bool:
            return all(s["is_processing"] for s in await slots(client, ""))

        await wait_until(full, timeout_s=10)
        async with client.stream(
            "POST", "/completion", json={"prompt": "queued", "n_predict": 5, "stream": True}
        ) as resp:
            queued_id.append(int(resp.headers["x-request-id"]))
        # the client is gone; now free the slots
        for s in await slots(client, ""):
            await client.post(f"/completion/{s['id_task']}/abort")
        nursery.cancel_scope.cancel()
    await trio.sleep(0.3)
    assert await all_idle(client)
    # the four hogs got slots; the queued request never got one: it was dropped from the
    # engine's queue, or (its client gone before its body was first read) never handed to it
    assert await metric(client, "sluice:requests_started_total") == started_before + 4
    assert await metric(client, "sluice:requests_dropped_queued_total") in (
        dropped_before, dropped_before + 1)


async def test_too_long_prompt_is_400_even_when_streaming(client: httpx.AsyncClient) -> None:
    prompt = "hello " * 3000
    for stream in (False, True):
        resp = await client.post("/completion", json={"prompt": prompt, "stream": stream})
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert err["type"] == "exceed_context_size_error"
        assert err["n_ctx"] == 2048
        assert err["n_prompt_tokens"] > 2048


async def test_n_predict_zero_evaluates_prompt_only(client: httpx.AsyncClient) -> None:
    out = await complete(client, prompt="Just the prompt", n_predict=0)
    assert out["content"] == ""
    assert out["tokens_predicted"] == 0
    assert out["tokens_evaluated"] > 0
    assert out["stop_type"] == "limit"


async def test_stop_string_cuts_the_content(client: httpx.AsyncClient) -> None:
    base = await complete(client, prompt="1, 2, 3, 4,", n_predict=20, temperature=0)
    assert " 6" in base["content"]
    out = await complete(client, prompt="1, 2, 3, 4,", n_predict=20, temperature=0, stop=[" 6"])
    assert out["stop_type"] == "word"
    assert out["stopping_word"] == " 6"
    assert out["content"] == base["content"][: base["content"].index(" 6")]


async def test_prompt_cache_reuses_the_prefix(client: httpx.AsyncClient) -> None:
    prompt = "A long shared prefix about rivers and mountains. " * 8
    first = await complete(client, prompt=prompt, n_predict=2, temperature=0)
    second = await complete(client, prompt=prompt + "And valleys.", n_predict=2, temperature=0)
    assert second["tokens_cached"] >= first["tokens_evaluated"] - 1
    assert second["timings"]["prompt_n"] < first["timings"]["prompt_n"]


async def test_n_probs_reports_top_probabilities(client: httpx.AsyncClient) -> None:
    out = await complete(client, prompt="The sky is", n_predict=3, temperature=0, n_probs=5,
                         return_tokens=True)
    probs = out["completion_probabilities"]
    assert len(probs) == 3
    for entry, token in zip(probs, out["tokens"], strict=True):
        assert entry["id"] == token
        assert len(entry["top_logprobs"]) == 5
        assert entry["top_logprobs"][0]["id"] == token  # greedy picks the most likely
        assert entry["logprob"] <= 0


async def test_grammar_constrains_output(client: httpx.AsyncClient) -> None:
    grammar = 'root ::= "yes" | "no"'
    out = await complete(client, prompt="Is water wet? Answer:", grammar=grammar, n_predict=10)
    assert out["content"] in ("yes", "no")
    assert out["stop_type"] == "eos"


async def test_invalid_grammar_is_400_before_any_token(client: httpx.AsyncClient) -> None:
    for stream in (False, True):
        resp = await client.post(
            "/completion", json={"prompt": "x", "grammar": 'root ::= "a" undefined-rule', "stream": stream}
        )
        assert resp.status_code == 400
        msg = resp.json()["error"]["message"]
        assert "undefined rule 'undefined-rule'" in msg
        assert "line 1, column 14" in msg


async def test_seeded_sampling_is_reproducible(client: httpx.AsyncClient) -> None:
    body = {"prompt": "My favourite food is", "n_predict": 16, "seed": 7, "temperature": 1.0}
    a = await complete(client, **body)
    b = await complete(client, **body)
    assert a["content"] == b["content"]
    assert a["generation_settings"]["seed"] == 7


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b'{"prompt": ', 400, "malformed JSON"),
        (b'"just a string"', 400, "JSON object"),
        (b'{"prompt": "x", "top_k": -1}', 400, "'top_k'"),
        (b'{"prompt": "x", "dry_multiplier": -0.5}', 400, "'dry_multiplier'"),
        (b'{"prompt": "x", "samplers": ["mirostat"]}', 400, "'samplers[0]'"),
        (b'{"prompt": [999999999]}', 400, "outside the vocabulary"),
        (b'{"prompt": "x", "logit_bias": [[999999999, 1]]}', 400, "'logit_bias'"),
        (b'{"prompt": "x", "id_slot": 9}', 400, "'id_slot'"),
        (b'{"prompt": "x", "grammar": "root ::= <[999999999]>"}', 400, "outside the vocabulary"),
        (b'{"prompt": "x", "grammar": "root ::= <qzxv-not-a-token>"}', 400, "not a single token"),
    ],
)
async def test_bad_bodies(client: httpx.AsyncClient, body: bytes, status: int, needle: str) -> None:
    resp = await client.post("/completion", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    err = resp.json()["error"]
    assert err["code"] == status
    assert needle in err["message"]


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/completion",
        content=b'{"prompt": "' + b"a" * (5 << 20) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == 413


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    resp = await client.get("/no/such/route")
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "not_found_error"
    resp = await client.get("/completion")
    assert resp.status_code == 405
    assert resp.json()["error"]["code"] == 405


async def test_metrics_in_prometheus_text(client: httpx.AsyncClient) -> None:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert "# TYPE llamacpp:prompt_tokens_total counter" in resp.text
    assert await metric(client, "llamacpp:tokens_predicted_total") > 0
    assert await metric(client, "llamacpp:requests_processing") == 0


@pytest.mark.parametrize("mirostat", [1, 2])
async def test_mirostat_runs_and_is_reproducible(client: httpx.AsyncClient, mirostat: int) -> None:
    body = {"prompt": "The weather today", "n_predict": 12, "seed": 3, "mirostat": mirostat,
            "mirostat_tau": 4.0, "mirostat_eta": 0.2, "ignore_eos": True}
    a = await complete(client, **body)
    b = await complete(client, **body)
    assert a["tokens_predicted"] == 12
    assert a["content"] == b["content"]
    assert a["generation_settings"]["mirostat"] == mirostat


async def test_logit_bias_bans_and_forces_tokens(client: httpx.AsyncClient) -> None:
    base = await complete(client, prompt="The capital of France is", n_predict=1, temperature=0,
                          return_tokens=True)
    first = base["tokens"][0]
    banned = await complete(client, prompt="The capital of France is", n_predict=1, temperature=0,
                            logit_bias=[[first, False]], return_tokens=True)
    assert banned["tokens"][0] != first
    forced = await complete(client, prompt="The capital of France is", n_predict=3,
                            temperature=0, logit_bias={"42": 100.0}, return_tokens=True)
    assert forced["tokens"] == [42, 42, 42]


async def test_penalties_and_truncating_samplers_are_accepted(client: httpx.AsyncClient) -> None:
    out = await complete(client, prompt="Repeat after me: la la la", n_predict=16, seed=5,
                         repeat_penalty=1.3, repeat_last_n=32, presence_penalty=0.5,
                         frequency_penalty=0.5, typical_p=0.9, top_k=20, top_p=0.9, min_p=0.1,
                         samplers=["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"])
    settings = out["generation_settings"]
    assert settings["repeat_penalty"] == 1.3
    assert settings["typical_p"] == 0.9
    assert out["tokens_predicted"] > 0


async def test_response_fields_pick_fields_by_path(client: httpx.AsyncClient) -> None:
    fields = ["content", "generation_settings/n_predict", "timings/predicted_n", "no/such"]
    body = {"prompt": "Hi", "n_predict": 3, "temperature": 0, "response_fields": fields}
    out = (await client.post("/completion", json=body)).json()
    assert set(out) == {"content", "generation_settings/n_predict", "timings/predicted_n"}
    assert out["generation_settings/n_predict"] == 3
    assert out["timings/predicted_n"] == 3
    events = await stream_events(client, "/completion", body)
    assert events[-1] == {"content": "", "generation_settings/n_predict": 3,
                          "timings/predicted_n": 3}  # the final event, as llama.cpp's
    assert "".join(e["content"] for e in events[:-1]) == out["content"]
    bad = await client.post("/completion", json={**body, "response_fields": "content"})
    assert bad.status_code == 400
    assert "response_fields" in bad.json()["error"]["message"]


async def test_n_cmpl_and_several_prompts_give_an_array(client: httpx.AsyncClient) -> None:
    resp = await client.post("/completion", json={"prompt": "Once upon a time", "n_predict": 4,
                                                   "n_cmpl": 2})
    assert resp.status_code == 200
    replies = resp.json()
    assert [r["index"] for r in replies] == [0, 1]
    assert all(r["tokens_predicted"] == 4 and r["stop"] for r in replies)
    resp = await client.post("/completion", json={"prompt": ["The sky is", [2, 651, 4389]],
                                                   "n_predict": 2})
    replies = resp.json()
    assert [r["index"] for r in replies] == [0, 1]
    assert replies[0]["prompt"] == "The sky is"
    assert replies[1]["tokens_evaluated"] == 3  # the token ids, as given
    # one prompt stays one prompt: strings with a token id are one mixed prompt
    mixed = await complete(client, prompt=[2, "The sky is"], n_predict=1)
    assert isinstance(mixed, dict)
    bad = await client.post("/completion", json={"prompt": "Hi", "n_cmpl": 9})
    assert bad.status_code == 400
    assert "at most 4 (one per slot)" in bad.json()["error"]["message"]
    # streamed: every event carries its index, each reply ends with its own final event
    events = await stream_events(client, "/completion", {
        "prompt": ["The sky is", "Water is"], "n_cmpl": 2, "n_predict": 3})
    finals = [e for e in events if e["stop"]]
    assert sorted(e["index"] for e in finals) == [0, 1, 2, 3]
    assert all(e["tokens_predicted"] == 3 for e in finals)
    for i in range(4):
        partials = [e for e in events if not e["stop"] and e["index"] == i]
        assert len(partials) == 3


async def test_post_sampling_probs_are_what_the_chain_left(client: httpx.AsyncClient) -> None:
    out = await complete(client, prompt="Today was the day. Today I would finally become a",
                         n_probs=10, temperature=1.0, n_predict=5, post_sampling_probs=True,
                         return_tokens=True)
    probs = out["completion_probabilities"]
    assert len(probs) == 5
    assert out["generation_settings"]["post_sampling_probs"] is True
    for entry, token in zip(probs, out["tokens"], strict=True):
        assert entry["id"] == token
        assert 0.0 < entry["prob"] <= 1.0
        assert "logprob" not in entry
        top = entry["top_probs"]
        assert 1 <= len(top) <= 10
        assert all(0.0 < p["prob"] <= 1.0 for p in top)
        assert [p["prob"] for p in top] == sorted((p["prob"] for p in top), reverse=True)
        assert token in [p["id"] for p in top] or entry["prob"] <= top[-1]["prob"]
        if len(top) < 10:  # fewer only when the chain left fewer: they hold all the mass
            assert sum(p["prob"] for p in top) == pytest.approx(1.0, abs=1e-3)
    # greedy: the pick had probability 1
    greedy = await complete(client, prompt="The sky is", n_probs=3, temperature=0, n_predict=2,
                            post_sampling_probs=True)
    for entry in greedy["completion_probabilities"]:
        assert entry["prob"] == 1.0
        assert [p["id"] for p in entry["top_probs"]] == [entry["id"]]


async def test_metrics_and_timings_as_llama_cpp(client: httpx.AsyncClient) -> None:
    one = await complete(client, prompt="I believe", n_predict=1)
    assert one["timings"]["predicted_per_second"] == 0.0  # the token came with the prompt
    many = await complete(client, prompt="I believe", n_predict=16, ignore_eos=True)
    t = many["timings"]
    assert t["predicted_per_second"] == pytest.approx(15 * 1000.0 / t["predicted_ms"])
    assert t["cache_n"] == many["tokens_cached"]
    resp = await client.get("/metrics")
    assert int(resp.headers["process-start-time-unix"]) > 0
    plain = {line.split(" ")[0]: float(line.split(" ")[1]) for line in resp.text.splitlines()
             if line.startswith("llamacpp:") and "{" not in line}
    for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total",
                 "tokens_predicted_total", "tokens_predicted_seconds_total", "n_decode_total",
                 "n_tokens_max", "spec_decode_num_drafts_total", "prompt_tokens_seconds",
                 "predicted_tokens_seconds", "requests_processing", "requests_deferred",
                 "n_busy_slots_per_decode"):
        assert f"llamacpp:{name}" in plain, name  # llama.cpp's series, unlabelled (one model)
    assert plain["llamacpp:tokens_predicted_seconds_total"] > 0
    assert plain["llamacpp:n_tokens_max"] >= 17


async def test_llama_cpp_prompt_objects_and_logit_bias_report(client: httpx.AsyncClient) -> None:
    one = await complete(client, prompt={"prompt_string": "I believe"}, n_predict=2)
    assert one["prompt"] == "I believe"
    several = (await client.post("/completion", json={
        "prompt": [{"prompt_string": "I believe"}, "The sky is"], "n_predict": 1})).json()
    assert [r["index"] for r in several] == [0, 1]
    media = await client.post("/completion", json={
        "prompt": {"prompt_string": "x", "multimodal_data": ["AAAA"]}})
    assert media.status_code == 400
    assert "Multimodal data provided" in media.json()["error"]["message"]
    # ignore_eos puts the end-of-generation tokens at -inf, reported as null (llama.cpp's)
    eos = await complete(client, prompt="Once", n_predict=2, ignore_eos=True)
    assert eos["generation_settings"]["logit_bias"]
    assert all(e["bias"] is None for e in eos["generation_settings"]["logit_bias"])
    plain = await complete(client, prompt="Once", n_predict=2)
    assert plain["generation_settings"]["logit_bias"] == []
