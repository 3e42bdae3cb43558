"""Whether a slot goes on after a sampled token: one pure function of what the token did.

The engine (:meth:`app.engine.scheduler.Engine._on_token`) gathers the facts of a token
(:class:`TokenFacts`) and acts on the :class:`Verdict`; the order of the checks is the
decision, and ``tests/unit/test_stopping.py`` holds it as a table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    GO_ON = "go_on"
    EOS = "eos"  # an end-of-generation token, or the caller's ``ends`` saw a finished reply
    WORD = "word"  # a stop string was generated (the text up to it is the reply)
    LIMIT = "limit"  # n_predict tokens, or t_max_predict_ms past the first new line
    CUT = "cut"  # n_indent: a line indented less ends the reply, and is not part of it
    FULL = "full"  # the slot's context is full: shift it (--context-shift) or end truncated


@dataclass(frozen=True, slots=True)
class TokenFacts:
    end_of_generation: bool  # the token is one of the model's end-of-generation tokens
    indent_cut: bool  # n_indent cut this token's text
    ends: bool  # the request's ``ends`` test found the reply finished with this text
    stop_word: str | None  # the stop string this token completed
    n_decoded: int  # tokens generated, this one included
    n_predict: int  # the request's limit (<= 0: none)
    over_time: bool  # t_max_predict_ms ran out after a new line
    n_past: int  # cells the slot holds
    n_ctx: int  # cells the slot may hold


def decide(f: TokenFacts) -> Verdict:
    """What the slot does after the token ``f`` describes."""
    if f.end_of_generation:
        return Verdict.EOS
    if f.indent_cut:
        return Verdict.CUT
    if f.ends:
        return Verdict.EOS
    if f.stop_word is not None:
        return Verdict.WORD
    if 0 < f.n_predict <= f.n_decoded or f.over_time:
        return Verdict.LIMIT
    if f.n_past + 1 >= f.n_ctx:
        return Verdict.FULL
    return Verdict.GO_ON
