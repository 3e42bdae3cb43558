"""The KoboldAI family's parsing and writing, without a model or a socket: KoboldCpp's field
names reach llama.cpp's, what llama.cpp cannot do is refused by name, and the wire writes
KoboldCpp's events and reply."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from app.api.kobold import GenerateWire, Running, error_body, generate_request
from app.completion import (
    CompletionRequest,
    Delta,
    GrammarConstraint,
    Interruption,
    Outcome,
    Reported,
    SamplingParams,
    StopType,
    Timings,
)
from app.errors import InvalidRequest, Overloaded
from app.requests import Defaults


def parse(**body: Any) -> Any:
    request, _trim = generate_request({"prompt": "Once", **body}, Defaults())
    return request


def test_koboldcpp_names_become_llama_cpp_fields() -> None:
    got = parse(max_length=12, temperature=0.5, top_k=7, top_p=0.8, min_p=0.02, typical=0.9,
                rep_pen=1.1, rep_pen_range=128, sampler_seed=42, stop_sequence=["\nYou:"],
                mirostat=2, mirostat_tau=4.0, dry_multiplier=0.8, xtc_probability=0.5,
                dynatemp_range=0.3, nsigma=1.5, ban_eos_token=True, memory="[Lore] ",
                logit_bias={"15": -100})
    s = got.sampling
    assert got.prompt == ("[Lore] Once",)
    assert got.n_predict == 12
    assert got.stops == ("\nYou:",)
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.typical_p) == (0.5, 7, 0.8, 0.02, 0.9)
    assert (s.repeat_penalty, s.repeat_last_n, s.seed) == (1.1, 128, 42)
    assert (s.mirostat, s.mirostat_tau, s.dry_multiplier, s.xtc_probability) == (2, 4.0, 0.8, 0.5)
    assert (s.dynatemp_range, s.top_n_sigma, s.ignore_eos) == (0.3, 1.5, True)
    assert s.dry_given
    assert got.logit_bias == ((15, -100.0),)


def test_nsigma_zero_is_off_and_a_grammar_is_the_requests_constraint() -> None:
    got = parse(nsigma=0, grammar='root ::= "yes" | "no"')
    assert got.sampling.top_n_sigma == -1.0
    assert got.constraint == GrammarConstraint('root ::= "yes" | "no"', field="grammar")


@pytest.mark.parametrize(("field", "value"), [
    ("tfs", 0.9), ("top_a", 0.2), ("smoothing_factor", 0.3), ("banned_tokens", ["foo"]),
    ("images", ["aGk="])])
def test_what_llama_cpp_cannot_do_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse(**{field: value})
    assert refused.value.param == field


def test_no_op_values_of_those_fields_are_accepted() -> None:
    parse(tfs=1, top_a=0, smoothing_factor=0, banned_tokens=[], images=[], rep_pen_slope=0.7,
          sampler_order=[6, 0, 1, 3, 4, 2, 5], use_default_badwordsids=False)


def test_trim_stop_defaults_on() -> None:
    assert generate_request({"prompt": "x"}, Defaults())[1] is True
    assert generate_request({"prompt": "x", "trim_stop": False}, Defaults())[1] is False


BASE = Outcome(
    id=7, text="", token_ids=(5, 6, 7), logprobs=(), stop=StopType.EOS, stopping_word="",
    interruption=None, truncated=False, id_slot=0, tokens_cached=0,
    timings=Timings(prompt_n=5, prompt_ms=30.0, predicted_n=3, predicted_ms=20.0),
    reported=Reported(request=CompletionRequest(prompt=("Once",), sampling=SamplingParams()),
                      grammar=None, n_prompt=5, model="m.gguf"))


def outcome(text: str, stop: StopType, word: str = "",
            interruption: Interruption | None = None) -> Outcome:
    return replace(BASE, text=text, stop=stop, stopping_word=word, interruption=interruption)


def delta(text: str) -> Delta:
    return Delta(text=text, token_ids=(9,), logprobs=(), id_slot=0, n_predicted=1)


def events(chunks: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for chunk in chunks:
        text = chunk.decode()
        assert text.startswith("event: message\ndata: ")
        out.append(json.loads(text.split("data: ", 1)[1]))
    return out


async def test_the_stream_and_the_reply() -> None:
    run = Running(job_id=1, genkey="KCPP1")
    wire = GenerateWire(run, trim_stop=False)
    sent = wire.delta(0, delta(" upon")) + wire.delta(0, delta(""))
    assert events(sent) == [{"token": " upon", "finish_reason": "null"}]
    assert run.text == [" upon"]
    last = await wire.final(0, outcome(" upon a", StopType.WORD, "\nYou:"))
    assert events(last) == [{"token": "\nYou:", "finish_reason": "stop"}]
    assert wire.reply == {"results": [{"text": " upon a\nYou:", "finish_reason": "stop",
                                       "prompt_tokens": 5, "completion_tokens": 3}]}


@pytest.mark.parametrize(("stop", "interruption", "reason"), [
    (StopType.EOS, None, "stop"), (StopType.LIMIT, None, "length"),
    (StopType.EOS, Interruption.ABORTED, "length")])
async def test_finish_reasons(stop: StopType, interruption: Interruption | None,
                              reason: str) -> None:
    wire = GenerateWire(Running(1, ""), trim_stop=True)
    last = await wire.final(0, outcome("a", stop, interruption=interruption))
    assert events(last) == [{"token": "", "finish_reason": reason}]


def test_errors_have_koboldai_shape() -> None:
    body = error_body(Overloaded("busy", retry_after_s=1))
    assert body == {"detail": {"msg": "busy", "type": Overloaded.type}}
