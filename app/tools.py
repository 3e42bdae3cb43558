"""Tool calls and thinking in a chat reply: the text format, and splitting a reply as it streams.

The format (Hermes', which Qwen 2.5/3, Hermes and SmolLM3 templates use; Sluice
uses it for every model, and writes the instructions into the system prompt of
templates that do not render ``tools`` themselves)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Several calls are separated by a newline. The grammar of :mod:`grammar.tools`
fixes the layout byte for byte, so :class:`ReplySplitter` can split a reply as
it streams: text, then each call's name as soon as it is complete and its
arguments in pieces. ``}`` + newline + ``</tool_call>`` cannot occur inside
JSON (a newline in a JSON string is escaped), so it ends the arguments.

Thinking (``reasoning_format: deepseek``): a reply that starts with
``<think>`` (or a prompt whose template opened one) has everything up to
``</think>`` split off as reasoning.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.completion import FunctionTool

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
CALL_SEPARATOR = "\n"
_CALL_END = "}" + CALL_CLOSE
_HEAD = re.compile(r'\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')
_HEAD_MAX = 200  # a head longer than this without matching is not a call
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


def new_call_id(prefix: str = "call_") -> str:
    return prefix + secrets.token_hex(12)


def tools_prompt(tools: Sequence[FunctionTool]) -> str:
    """The instructions for a template that does not render ``tools`` itself."""
    lines = [json.dumps({"name": t.name, "description": t.description,
                         "parameters": t.parameters}, ensure_ascii=False) for t in tools]
    return ("You can call functions. Their signatures, as JSON Schema, are inside <tools></tools>:\n"
            "<tools>\n" + "\n".join(lines) + "\n</tools>\n"
            "To call a function, reply with a JSON object with its name and arguments inside "
            "<tool_call></tool_call> tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def render_call(call: ToolCall) -> str:
    """A call from the history, as the model would have written it."""
    try:
        args = json.dumps(json.loads(call.arguments), ensure_ascii=False)
    except ValueError:
        args = call.arguments
    return f'{CALL_OPEN}{{"name": {json.dumps(call.name)}, "arguments": {args}}}{CALL_CLOSE}'


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


class ReplySplitter:
    """Feed a reply's text as it arrives; get :data:`Piece` values back.

    Args:
        tools: parse tool calls (the reply was constrained by a tool grammar).
        reasoning: split ``<think>`` blocks off.
        thinking_open: the prompt ended inside a ``<think>`` block.
        new_id: makes each call's id.
    """

    def __init__(self, *, tools: bool, reasoning: bool, thinking_open: bool = False,
                 new_id: Callable[[], str] = new_call_id) -> None:
        self._tools = tools
        self._state = "think" if reasoning and thinking_open else (
            "think_start" if reasoning else "text")
        self._buf = ""
        self._new_id = new_id
        self._args: list[str] = []  # the current call's arguments given out so far
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
            self._emit_args(out, self._buf)
            self._finish_call(out, complete=False)
        elif self._state == "head" and self._buf:
            self._text(out, self._buf)  # never became a call
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

    def _emit_args(self, out: list[Piece], piece: str) -> None:
        if piece:
            self._args.append(piece)
            out.append(CallArguments(len(self.reply.calls) - 1, piece))

    def _finish_call(self, out: list[Piece], *, complete: bool) -> None:
        last = self.reply.calls[-1]
        self.reply.calls[-1] = ToolCall(last.id, last.name, "".join(self._args))
        self.reply.complete.append(complete)
        out.append(CallEnd(len(self.reply.calls) - 1))
        self._args = []

    def _step(self, out: list[Piece], *, final: bool) -> bool:
        buf = self._buf
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
                at = buf.find(CALL_OPEN)
                if at >= 0:
                    self._text(out, buf[:at])
                    self._buf = buf[at + len(CALL_OPEN):]
                    self._state = "head"
                    return True
                keep = 0 if final else _held(buf, CALL_OPEN)
                self._text(out, buf[:len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                return False
            case "head":
                m = _HEAD.match(buf)
                if m is None:
                    if len(buf) > _HEAD_MAX:
                        self._text(out, CALL_OPEN + buf)
                        self._buf, self._state = "", "text"
                    return False
                call = ToolCall(self._new_id(), json.loads(m.group(1)), "")
                self.reply.calls.append(call)
                out.append(CallStart(len(self.reply.calls) - 1, call.id, call.name))
                self._buf = buf[m.end():]
                self._state = "args"
                return True
            case "args":  # the buffer holds only what is not given out yet
                at = buf.find(_CALL_END)
                if at >= 0:
                    self._emit_args(out, buf[:at].rstrip())
                    self._finish_call(out, complete=True)
                    self._buf = buf[at + len(_CALL_END):]
                    self._state = "between"
                    return True
                keep = len(buf) - _held(buf, _CALL_END)
                body = buf[:keep].rstrip()  # trailing whitespace may precede the end
                self._emit_args(out, body)
                self._buf = buf[len(body):]
                return False
            case _:  # between calls
                nxt = CALL_SEPARATOR + CALL_OPEN
                if buf.startswith(nxt):
                    self._buf = buf[len(nxt):]
                    self._state = "head"
                    return True
                if not final and nxt.startswith(buf):
                    return False
                self._state = "text"  # only whitespace or end of generation can follow
                self._buf = buf.strip() if not buf.strip() else buf
                return bool(self._buf)
