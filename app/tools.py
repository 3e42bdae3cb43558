"""Tool calls and thinking in a chat reply: splitting a reply as it streams.

How a model writes calls is its format's :class:`grammar.tools.CallSyntax` (the table is
:mod:`app.toolformat`, Hermes' the fallback; what the model is shown: :mod:`app.toolprompt`).
The grammar of :mod:`grammar.tools` fixes the text around the arguments byte for byte, so
:class:`ReplySplitter` can split a reply as it streams: text, then each call's name as soon as
it is complete and its arguments in pieces. The arguments end where their JSON object
closes (a scanner follows strings and nesting), so they are exactly the call's own JSON: a
reply cut by the token limit gives a JSON prefix, never the tail of the call's wrapper.

A call that repeats an earlier call of the same reply (same name, same arguments text) is
dropped, and the reply ends there: a model repeating itself is looping, and no client wants
the same call twice. While a call could still turn out to be such a repeat (its name and
arguments so far match an earlier call's), its pieces are held back; they go out as soon as
it differs.

Thinking (``reasoning_format: deepseek``): a reply that starts with ``<think>`` (or a prompt
whose template opened one) has everything up to ``</think>`` split off as reasoning.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from grammar.tools import (
    HERMES,
    ID_SLOT,
    PARAM_CLOSE,
    PARAM_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    CallSyntax,
)

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_HEAD_MAX = 200  # a head longer than this without matching is not a call


def answer_part(text: str, *, opened: bool) -> str:
    """The answer of a reply that may begin with a thinking block (all of it when the
    prompt ``opened`` one): what a schema-constrained reply's schema applies to."""
    if not opened and not text.lstrip().startswith(THINK_OPEN):
        return text
    at = text.find(THINK_CLOSE)
    return text[at + len(THINK_CLOSE):].lstrip() if at >= 0 else ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


def new_call_id(prefix: str = "call_") -> str:
    return prefix + secrets.token_hex(12)


class RepeatWatch:
    """Ends a tool-call reply at a call that repeats an earlier one (the engine's ``ends``):
    the splitter drops such a call anyway, and generating on would only spend tokens."""

    def __init__(self, syntax: CallSyntax, *, required: bool, thinking: str,
                 raw: Mapping[str, frozenset[str]] | None = None) -> None:
        self._splitter = ReplySplitter(tools=True, reasoning=bool(thinking),
                                       thinking_open=thinking == "open", syntax=syntax,
                                       required=required, raw=raw)

    def __call__(self, text: str) -> bool:
        self._splitter.feed(text)
        return self._splitter.repeated


# --- splitting a reply ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TextPiece:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningPiece:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class CallEnd:
    index: int


Piece = TextPiece | ReasoningPiece | CallStart | CallArguments | CallEnd


@dataclass(slots=True)
class Reply:
    """A whole reply, split."""

    text: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)  # per call: did its closing tag arrive


def _held(buffer: str, marker: str) -> int:
    """How many trailing characters of ``buffer`` could be the start of ``marker``."""
    for k in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:k]):
            return k
    return 0


_FUNCTION_END = "</function>"


def _begins(text: str, buf: str) -> bool:
    """Whether ``buf`` may be the start of ``text``: a reply cut inside a character ends in
    U+FFFD (the detokenizer's mark for the bytes it was left with)."""
    return text.startswith(buf) or (buf.endswith("\ufffd") and
                                    text.startswith(buf.rstrip("\ufffd")))


def _close_pattern(close: str) -> re.Pattern[str]:
    """The call's tail, after the whitespace the arguments' grammar may end with."""
    head, slot, tail = close.partition(ID_SLOT)
    return re.compile(r"[ \t\n]*" + re.escape(head) +
                      ("[A-Za-z0-9]{9}" + re.escape(tail) if slot else ""))


class _JsonEnd:
    """Where a JSON value that streams in ends: follows strings and nesting."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False

    def feed(self, text: str) -> int:
        """How much of ``text`` belongs to the value; ``-1``: all of it, and it goes on."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
                self.started = True
            elif ch in "}]":
                self.depth -= 1
                if self.started and self.depth <= 0:
                    return i + 1
        return -1


class ReplySplitter:
    """Feed a reply's text as it arrives; get :data:`Piece` values back.

    Args:
        tools: parse tool calls (the reply was constrained by a tool grammar).
        reasoning: split ``<think>`` blocks off.
        thinking_open: the prompt ended inside a ``<think>`` block.
        new_id: makes each call's id.
        syntax: how the model writes its calls.
        required: the grammar forced calls: the answer (after any thinking) is calls only.
        raw: for XML arguments, per tool name the parameters written as raw text
            (:func:`grammar.tools.raw_params`).
    """

    def __init__(self, *, tools: bool, reasoning: bool, thinking_open: bool = False,
                 new_id: Callable[[], str] = new_call_id, syntax: CallSyntax = HERMES,
                 required: bool = False,
                 raw: Mapping[str, frozenset[str]] | None = None) -> None:
        self._tools = tools
        self._required = tools and required
        self._syntax = syntax
        self._close = _close_pattern(syntax.call_close)
        self._state = "think" if reasoning and thinking_open else (
            "think_start" if reasoning else "text")
        self._buf = ""
        self._new_id = new_id
        self._args: list[str] = []  # the current call's arguments so far
        self._scan = _JsonEnd()
        self._held: list[Piece] | None = None  # a call that may repeat an earlier one
        self._raw = dict(raw or {})  # XML arguments: per tool, the parameters written as raw text
        self._xml_value: str | None = None  # the XML parameter being read
        self._xml_raw = False
        #: a call repeated an earlier one: it was dropped, and the reply ends there
        self.repeated = False
        self.reply = Reply()

    # each step consumes from the buffer and returns whether to go on
    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while self._step(out, final=False):
            pass
        return out

    def close(self) -> list[Piece]:
        """The reply ended: give out what was held back."""
        out: list[Piece] = []
        while self._step(out, final=True):
            pass
        if self._state == "args":  # cut off inside a call (length limit or interruption)
            if self._syntax.args == "json":  # (XML: all that can be given is given)
                self._emit_args(out, self._buf)
            self._finish_call(out, complete=False)
        # cut inside a call's wrapper before its name was whole: under the grammar only a
        # call writes the trigger, so this is no text; there is no call to report either
        self._buf = ""
        return out

    def _text(self, out: list[Piece], text: str) -> None:
        if text:
            self.reply.text += text
            out.append(TextPiece(text))

    def _reasoning(self, out: list[Piece], text: str) -> None:
        if text:
            self.reply.reasoning += text
            out.append(ReasoningPiece(text))

    def _put(self, out: list[Piece], piece: Piece) -> None:
        (self._held if self._held is not None else out).append(piece)

    def _may_repeat(self) -> bool:
        current = self.reply.calls[-1]
        so_far = "".join(self._args)
        return any(c.name == current.name and c.arguments.startswith(so_far)
                   for c in self.reply.calls[:-1])

    def _emit_args(self, out: list[Piece], piece: str) -> None:
        if piece:
            self._args.append(piece)
            self._put(out, CallArguments(len(self.reply.calls) - 1, piece))
            if self._held is not None and not self._may_repeat():
                out.extend(self._held)
                self._held = None

    def _start_call(self, out: list[Piece], name: str) -> None:
        call = ToolCall(self._new_id(), name, "")
        self.reply.calls.append(call)
        self._args, self._scan = [], _JsonEnd()
        self._xml_value, self._xml_raw = None, False
        self._held = [] if any(c.name == name for c in self.reply.calls[:-1]) else None
        self._put(out, CallStart(len(self.reply.calls) - 1, call.id, call.name))

    def _finish_call(self, out: list[Piece], *, complete: bool) -> None:
        last = self.reply.calls[-1]
        args = "".join(self._args)
        if complete and self._held is not None and any(
                c.name == last.name and c.arguments == args for c in self.reply.calls[:-1]):
            self.reply.calls.pop()  # a repeat: dropped, and nothing more is read
            self._held, self.repeated, self._state = None, True, "done"
            return
        self.reply.calls[-1] = ToolCall(last.id, last.name, args)
        self.reply.complete.append(complete)
        if self._held is not None:
            out.extend(self._held)
            self._held = None
        out.append(CallEnd(len(self.reply.calls) - 1))
        self._args = []

    def _xml_step(self, out: list[Piece], *, final: bool) -> bool:
        """XML parameters in, the arguments' JSON out: ``{"k": `` at each parameter, a raw
        string's text JSON-escaped inside quotes, any other value as written, ``}`` at the
        end; a cut gives a prefix of that JSON."""
        buf = self._buf
        call = self.reply.calls[-1]
        first = not self._args
        if self._xml_value is None:  # between parameters
            if buf.startswith(PARAM_OPEN):
                at = buf.find(">\n")
                if at < 0:
                    if len(buf) > _HEAD_MAX:
                        self._xml_value = ""  # not under the grammar: take it as text
                    return False
                key = buf[len(PARAM_OPEN):at]
                raw = key in self._raw.get(call.name, frozenset())
                self._emit_args(out, ("{" if first else ", ") + json.dumps(key, ensure_ascii=False)
                                + ": " + ('"' if raw else ""))
                self._xml_value, self._xml_raw = key, raw
                self._buf = buf[at + 2:]
                return True
            end = self._syntax.call_close
            if not buf.startswith(_FUNCTION_END) and (
                    _begins(PARAM_OPEN, buf) or _begins(end, buf)):
                return False  # more to come; at the end, a cut call (close() finishes it)
            self._emit_args(out, ("{" if first else "") + "}")  # the function's end
            self._state = "close"
            self._finish_call(out, complete=True)
            return self._state != "done"
        at = buf.find(PARAM_CLOSE)
        # a partial closing tag is held back (at a cut too: the grammar wrote it, not the value)
        text = buf[:len(buf) - _held(buf, PARAM_CLOSE)] if at < 0 else buf[:at]
        piece = json.dumps(text, ensure_ascii=False)[1:-1] if self._xml_raw else text
        self._emit_args(out, piece)
        if at < 0:
            self._buf = buf[len(text):]
            return False
        self._emit_args(out, '"' if self._xml_raw else "")
        self._xml_value, self._buf = None, buf[at + len(PARAM_CLOSE):]
        return True

    def _step(self, out: list[Piece], *, final: bool) -> bool:
        buf = self._buf
        syntax = self._syntax
        match self._state:
            case "think_start":
                stripped = buf.lstrip()
                if stripped.startswith(THINK_OPEN):
                    self._buf = stripped[len(THINK_OPEN):]
                    self._state = "think"
                    return True
                if not final and THINK_OPEN.startswith(stripped):
                    return False  # empty, or maybe the tag arriving
                self._state = "text"
                return True
            case "think_end":  # the whitespace after </think> is not part of the answer
                self._buf = buf.lstrip()
                if not self._buf:
                    return False
                self._state = "text"
                return True
            case "think":
                at = buf.find(THINK_CLOSE)
                if at >= 0:
                    self._reasoning(out, buf[:at])
                    self._buf = buf[at + len(THINK_CLOSE):]
                    self._state = "think_end"
                    return True
                keep = 0 if final else _held(buf, THINK_CLOSE)
                self._reasoning(out, buf[:len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                return False
            case "text":
                if not self._tools:
                    self._text(out, buf)
                    self._buf = ""
                    return False
                at = 0 if self._required else buf.find(syntax.trigger)
                if at >= 0:
                    self._text(out, buf[:at])
                    self._buf = buf[at:]
                    self._state = "open"
                    return True
                keep = 0 if final else _held(buf, syntax.trigger)
                self._text(out, buf[:len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                return False
            case "open":  # the block's and the first call's opening
                opening = syntax.block_open + syntax.call_open
                if buf.startswith(opening):
                    self._buf, self._state = buf[len(opening):], "head"
                    return True
                if _begins(opening, buf):
                    if final:
                        self._buf = ""  # cut inside the opening: no call, and no text
                    return False
                self._text(out, buf)  # the trigger without a call (not under the grammar)
                self._buf, self._state = "", "text"
                return False
            case "head":
                name: str | None = None
                if syntax.quoted:
                    m = _QUOTED.match(buf)
                    if m is not None and buf[m.end():].startswith(syntax.name_to_args):
                        name, rest = json.loads(m.group()), buf[m.end() + len(syntax.name_to_args):]
                else:
                    at = buf.find(syntax.name_to_args)
                    if at >= 0:
                        name, rest = buf[:at], buf[at + len(syntax.name_to_args):]
                if name is None:
                    if len(buf) > _HEAD_MAX:
                        self._text(out, syntax.call_open + buf)
                        self._buf, self._state = "", "text"
                    return False
                self._start_call(out, name)
                self._buf, self._state = rest, "args"
                return True
            case "args" if syntax.args == "xml":
                return self._xml_step(out, final=final)
            case "args":  # the buffer holds only what is not given out yet
                end = self._scan.feed(buf)
                if end < 0:
                    self._emit_args(out, buf)
                    self._buf = ""
                    return False
                self._emit_args(out, buf[:end])
                self._buf, self._state = buf[end:], "close"
                self._finish_call(out, complete=True)
                return self._state != "done"
            case "close":  # the call's tail (its closing tag, Mistral's id)
                m = self._close.match(buf)
                if m is not None:
                    self._buf, self._state = buf[m.end():], "between"
                    return True
                if len(buf.lstrip(" \t\n")) < len(syntax.call_close) + 9:
                    if final:
                        self._buf = ""  # cut inside the tail
                    return False
                self._state = "between"  # not under the grammar: read on
                return True
            case "between":
                nxt = syntax.separator + syntax.call_open
                if buf.startswith(nxt):
                    self._buf = buf[len(nxt):]
                    self._state = "head"
                    return True
                if syntax.block_close and buf.startswith(syntax.block_close):
                    self._buf, self._state = buf[len(syntax.block_close):], "after"
                    return True
                if _begins(nxt, buf) or _begins(syntax.block_close, buf):
                    if final:
                        self._buf = ""  # cut inside the next call's opening or the block's end
                    return False
                self._state = "after"
                return True
            case "after":  # only whitespace or the end of generation can follow
                self._buf = buf.strip() if not buf.strip() else buf
                if self._buf:
                    self._state = "text"
                return bool(self._buf)
            case _:  # done: a repeated call ended the reply
                self._buf = ""
                return False
