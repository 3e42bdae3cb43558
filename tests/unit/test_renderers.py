"""Every family's renderer against typed outcomes: each abnormal ending reaches each wire shape."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app.api import compat, goinfer, native, openai
from app.completion import (
    CompletionRequest,
    Interruption,
    Outcome,
    Reported,
    SamplingParams,
    SchemaVerdict,
    StopType,
    Timings,
    TokenLogprobs,
    TokenProb,
)
from grammar import Violation


def outcome(**changes: object) -> Outcome:
    base = Outcome(
        id=7, text="Hello", token_ids=(5, 6), logprobs=(), stop=StopType.EOS, stopping_word="",
        interruption=None, truncated=False, id_slot=1, tokens_cached=2,
        timings=Timings(prompt_n=3, prompt_ms=30.0, predicted_n=2, predicted_ms=20.0),
        reported=Reported(request=CompletionRequest(prompt=("Hi",), sampling=SamplingParams(seed=9)),
                          grammar=None, n_prompt=5, model="m.gguf"))
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("interruption", list(Interruption))
def test_every_interruption_reaches_every_renderer(interruption: Interruption) -> None:
    o = outcome(interruption=interruption, stop=StopType.NONE)
    key = interruption.value
    final = native.final_object(o)
    assert final[key] is True
    assert final["stop_type"] == "none"
    assert final["stop"] is True
    assert openai.extras(o)[key] is True
    assert openai.finish_reason(o) == "stop"
    assert goinfer._reply(o, 0.0, 0.5, 1.0)[key] is True
    assert compat.llama_go_reply("Hi", o)["CompleteReason"] == "Aborted"
    for other in Interruption:
        if other is not interruption:
            assert other.value not in final
            assert other.value not in openai.extras(o)


@pytest.mark.parametrize(("stop", "native_type", "finish", "reason"), [
    (StopType.EOS, "eos", "stop", "EOS"),
    (StopType.LIMIT, "limit", "length", "MaxTokens"),
    (StopType.WORD, "word", "stop", "Stop"),
])
def test_stop_types_map_to_each_family(stop: StopType, native_type: str, finish: str,
                                       reason: str) -> None:
    o = outcome(stop=stop, stopping_word="END" if stop is StopType.WORD else "")
    final = native.final_object(o)
    assert final["stop_type"] == native_type
    assert (final["stopped_eos"], final["stopped_limit"], final["stopped_word"]) == (
        stop is StopType.EOS, stop is StopType.LIMIT, stop is StopType.WORD)
    assert openai.finish_reason(o) == finish
    assert compat.complete_reason(o) == reason
    for key in ("aborted", "timeout", "shutdown", "model_changed"):
        assert key not in final


def test_native_final_object_fields() -> None:
    lp = TokenLogprobs(TokenProb(5, b"Hel", -0.5), (TokenProb(5, b"Hel", -0.5), TokenProb(8, b"\xff", -2.0)))
    o = outcome(logprobs=(lp,), schema=SchemaVerdict(False, (Violation("/a", "bad"),)),
                reported=replace(outcome().reported, request=CompletionRequest(
                    prompt=("Hi",), sampling=SamplingParams(seed=9, n_probs=2))))
    final = native.final_object(o)
    json.dumps(final, allow_nan=False)
    assert (final["tokens_predicted"], final["tokens_evaluated"], final["tokens_cached"]) == (2, 5, 2)
    assert final["prompt"] == "Hi"
    assert final["generation_settings"]["seed"] == 9
    assert final["generation_settings"]["samplers"] == list(SamplingParams().samplers)
    # 2 tokens in 20 ms: the first came with the prompt, so one decode step: 50 tokens/s
    assert final["timings"]["predicted_per_second"] == pytest.approx(50.0)
    assert final["completion_probabilities"][0]["top_logprobs"][1] == {
        "id": 8, "token": "\ufffd", "bytes": [255], "logprob": -2.0}
    assert final["schema_valid"] is False
    assert final["schema_errors"] == [{"pointer": "/a", "message": "bad"}]
    extras = openai.extras(o)
    assert extras["schema_valid"] is False
    assert "timings" in extras
    assert openai.usage(o) == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
