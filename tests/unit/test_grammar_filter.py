"""The candidate filter of full grammar passes (app/engine/grammar_filter.py), against the Python
recognizer as the oracle: it may only ever drop tokens the grammar cannot take next."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.grammar_filter import GrammarTracker, VocabIndex, first_bytes
from grammar import Recognizer, convert, parse_gbnf
from grammar.gbnf_ast import CharClass

CODE_POINTS = st.integers(0, 0x10FFFF).filter(lambda c: not 0xD800 <= c <= 0xDFFF)


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.lists(st.tuples(CODE_POINTS, CODE_POINTS), min_size=1, max_size=4),
       CODE_POINTS)
def test_first_bytes_covers_every_matching_character(negated: bool,
                                                     pairs: list[tuple[int, int]],
                                                     code: int) -> None:
    cls = CharClass(negated, tuple((min(a, b), max(a, b)) for a, b in pairs))
    if cls.matches(code):
        assert chr(code).encode()[0] in first_bytes(cls)


def test_first_bytes_of_a_single_ascii_character() -> None:
    assert first_bytes(CharClass(False, ((0x74, 0x74),))) == {0x74}
    assert 0x22 not in first_bytes(CharClass(True, ((0x22, 0x22), (0x5C, 0x5C))))


SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
    "tags": {"type": "array", "items": {"enum": ["alpha", "beta", "gamma"]}, "maxItems": 3},
    "n": {"type": "integer", "minimum": 0, "maximum": 500}}, "required": ["id", "tags", "n"],
    "additionalProperties": False}
FRAGMENTS = ['{"', '"id', 'id', '":', ' "', '"', 'ABC', 'A', 'B', 'Z', '-', '12', '3', '4', '0',
             '",', ' ', '"tags', 'tags', ' [', '[', '"al', 'alpha', 'pha', 'beta', 'gam', 'ma',
             '"]', ']', ',', ' "n', '":', ' 4', '42', '1', '}', '\n', 'é', '€', '{', 'x', 'AB',
             '"A', '-1', '  ']


def test_candidates_never_drop_a_token_the_grammar_can_take() -> None:
    grammar = parse_gbnf(convert(SCHEMA).gbnf)
    vocab = [f.encode() for f in FRAGMENTS]
    index = VocabIndex(vocab)
    tracker = GrammarTracker(grammar, index, lambda t: vocab[t], eog_ids=())
    oracle = Recognizer(grammar)
    state = oracle.initial()
    rng = random.Random(7)
    narrowed = 0
    for _ in range(40):
        possible = [t for t, text in enumerate(FRAGMENTS) if oracle.advance(state, text)]
        if not possible:
            break
        ids = tracker.candidates()
        if ids is not None:
            narrowed += 1
            assert set(possible) <= set(ids.tolist()), (state, possible, ids)
        token = rng.choice(possible)
        tracker.accept(token)
        state = oracle.advance(state, FRAGMENTS[token])
    assert narrowed > 10


def test_a_token_the_python_side_refuses_turns_the_filter_off() -> None:
    grammar = parse_gbnf('root ::= "ab"')
    vocab = [b"a", b"x"]
    tracker = GrammarTracker(grammar, VocabIndex(vocab), lambda t: vocab[t], eog_ids=())
    assert tracker.candidates() is not None
    tracker.accept(1)  # llama.cpp would never accept it; if it did, stop trusting the state
    assert tracker.candidates() is None
    assert not tracker.active


def test_token_references_leave_the_filter_off() -> None:
    grammar = parse_gbnf("root ::= <[5]> \"a\"")
    tracker = GrammarTracker(grammar, VocabIndex([b"a"]), lambda t: b"a", eog_ids=())
    assert tracker.candidates() is None


def test_a_grammar_too_ambiguous_to_follow_turns_the_filter_off() -> None:
    alternatives = " | ".join(f'"a" "{i}"' for i in range(100))  # 100 stacks alive after "a"
    vocab = [b"a", b"1"]
    tracker = GrammarTracker(parse_gbnf(f"root ::= {alternatives}"), VocabIndex(vocab),
                             lambda t: vocab[t], eog_ids=())
    tracker.accept(0)
    assert not tracker.active
