"""Incremental detokenization and stop strings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.text import Detokenizer, StopMatcher


def test_multibyte_character_split_across_tokens_is_held_then_released() -> None:
    d = Detokenizer()
    snowman = "☃".encode()  # 3 bytes
    assert d.feed(b"a" + snowman[:1]) == "a"
    assert d.feed(snowman[1:2]) == ""
    assert d.feed(snowman[2:] + b"b") == "☃b"
    assert d.flush() == ""


def test_four_byte_emoji_byte_by_byte() -> None:
    d = Detokenizer()
    out = "".join(d.feed(bytes([b])) for b in "🦙!".encode())
    assert out + d.flush() == "🦙!"


def test_dangling_bytes_become_replacement_character_at_flush() -> None:
    d = Detokenizer()
    assert d.feed(b"ok\xe2\x98") == "ok"
    assert d.flush() == "\ufffd"


def test_no_stop_strings_passes_text_through() -> None:
    m = StopMatcher(())
    assert m.feed("hello").text == "hello"


def test_partial_stop_is_held_back_until_resolved() -> None:
    m = StopMatcher(("</s>",))
    r = m.feed("hello </")
    assert (r.text, r.stop_word) == ("hello ", None)
    assert m.held == "</"
    r = m.feed("b> more")
    assert (r.text, r.stop_word) == ("</b> more", None)


def test_stop_across_pieces_cuts_text_before_it() -> None:
    m = StopMatcher(("STOP",))
    assert m.feed("abc ST").text == "abc "
    r = m.feed("OP and after")
    assert (r.text, r.stop_word) == ("", "STOP")


def test_earliest_of_several_stops_wins() -> None:
    m = StopMatcher(("world", "lo w"))
    r = m.feed("hello world")
    assert (r.text, r.stop_word) == ("hel", "lo w")


def test_flush_releases_held_prefix_when_no_stop_came() -> None:
    m = StopMatcher(("\n\n",))
    assert m.feed("line\n").text == "line"
    assert m.flush() == "\n"


@pytest.mark.parametrize("chunks", [["a", "b", "c"], ["ab", "c"], ["abc"]])
def test_stop_found_whatever_the_chunking(chunks: list[str]) -> None:
    m = StopMatcher(("bc",))
    out = ""
    word = None
    for c in chunks:
        r = m.feed(c)
        out += r.text
        word = word or r.stop_word
        if word:
            break
    assert (out, word) == ("a", "bc")


def _naive(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, str | None]:
    """The released text and the stop found, by searching the whole text each time."""
    text = ""
    for piece in pieces:
        text += piece
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            at, stop = min(hits, key=lambda h: h[0])
            return text[:at], stop
    return text, None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text("ab", min_size=1, max_size=6), min_size=1, max_size=4),
       st.lists(st.text("abc", max_size=5), min_size=1, max_size=12))
def test_the_stop_automaton_agrees_with_a_full_search(stops: list[str], pieces: list[str]) -> None:
    matcher = StopMatcher(tuple(stops))
    released, found = "", None
    for piece in pieces:
        result = matcher.feed(piece)
        released += result.text
        if result.stop_word is not None:
            found = result.stop_word
            break
    else:
        released += matcher.flush()
    want_text, want_stop = _naive(tuple(stops), pieces)
    assert (released, found) == (want_text, want_stop)

