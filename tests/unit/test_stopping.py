"""The stop decision after each sampled token, as a table: which check wins when several
hold is the decision (an end-of-generation token beats a stop string, a stop string
beats the token limit, a full context is looked at last)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engine.stopping import TokenFacts, Verdict, decide

GOING = TokenFacts(end_of_generation=False, indent_cut=False, ends=False, stop_word=None,
                   n_decoded=3, n_predict=10, over_time=False, n_past=20, n_ctx=64)


@pytest.mark.parametrize(("changes", "verdict"), [
    ({}, Verdict.GO_ON),
    ({"n_predict": -1, "n_decoded": 10_000}, Verdict.GO_ON),  # no limit
    ({"n_predict": 0, "n_decoded": 1}, Verdict.GO_ON),  # 0 ends before the first token
    ({"end_of_generation": True}, Verdict.EOS),
    ({"end_of_generation": True, "stop_word": "###", "n_decoded": 10}, Verdict.EOS),
    ({"indent_cut": True}, Verdict.CUT),
    ({"indent_cut": True, "ends": True}, Verdict.CUT),
    ({"ends": True, "stop_word": "}"}, Verdict.EOS),  # the reply is finished either way
    ({"stop_word": "###"}, Verdict.WORD),
    ({"stop_word": "###", "n_decoded": 10}, Verdict.WORD),  # the word, not the limit
    ({"n_decoded": 10}, Verdict.LIMIT),
    ({"n_decoded": 11}, Verdict.LIMIT),
    ({"over_time": True}, Verdict.LIMIT),
    ({"n_decoded": 10, "n_past": 63}, Verdict.LIMIT),  # a limit is not a truncation
    ({"n_past": 63}, Verdict.FULL),
    ({"n_past": 62}, Verdict.GO_ON),  # room for the next token's cell
])
def test_the_first_check_that_holds_decides(changes: dict[str, object], verdict: Verdict
                                            ) -> None:
    assert decide(replace(GOING, **changes)) is verdict  # type: ignore[arg-type]
