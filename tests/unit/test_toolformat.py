"""Tool-call formats against the real chat templates that teach them (no model needed).

``tests/data/templates`` holds model templates as llama.cpp's ``models/templates`` ships them.
For each: the format detected; the template's own rendering of an assistant's calls holds
exactly the text :func:`app.tools.render_calls` writes; the format's grammar admits that text;
and the splitter reads it back into the same calls, whatever the chunking and wherever the
reply is cut.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.chat import ChatTemplate, Message
from app.completion import FunctionTool
from app.toolformat import BY_NAME, detect
from app.toolprompt import render_calls
from app.tools import CallArguments, CallEnd, CallStart, ReplySplitter, ToolCall
from grammar import accepts, parse_gbnf
from grammar.tools import CallSyntax, ToolSchema, raw_params, tool_calls_gbnf

TEMPLATES = Path(__file__).resolve().parent.parent / "data" / "templates"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                           "unit": {"enum": ["c", "f"]}},
           "required": ["city"]}
TIME = {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}
TOOLS = [FunctionTool("get_weather", "The weather in a city", WEATHER, "tools"),
         FunctionTool("get_time", "The time in a zone", TIME, "tools")]
RAW = {t.name: raw_params(t.parameters) for t in TOOLS}
CALLS = (ToolCall("abc123xyz", "get_weather", '{"city": "Paris <&> \\"Cité\\"", "unit": "c"}'),
         ToolCall("def456uvw", "get_time", '{"tz": "Europe/Paris"}'))

CASES = {  # template file: the format it teaches (None: none here, Hermes' instructions)
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": "hermes",
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral-nemo",
    "unsloth-mistral-Devstral-Small-2507.jinja": "mistral",
    "ibm-granite-granite-3.3-2B-Instruct.jinja": "granite",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": "deepseek-r1",
    "Qwen3-Coder.jinja": "qwen3-coder",
    "Qwen3.5-4B.jinja": "qwen3-coder",
    "GLM-4.6.jinja": None,
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate(name, (TEMPLATES / name).read_text(encoding="utf-8"),
                        bos_token="<s>", eos_token="</s>")


def calls_for(syntax: CallSyntax) -> tuple[ToolCall, ...]:
    return CALLS if syntax.parallel else CALLS[:1]


def rendered(t: ChatTemplate, calls: tuple[ToolCall, ...]) -> str:
    """The template's text for a conversation whose assistant turn holds ``calls``."""
    return t.render([Message("user", "Weather and time in Paris?"),
                     Message("assistant", "", tool_calls=calls)], tools=TOOLS,
                    add_generation_prompt=False)


def split(text: str, syntax: CallSyntax, step: int, *, required: bool = False
          ) -> tuple[ReplySplitter, list[object]]:
    s = ReplySplitter(tools=True, reasoning=False, syntax=syntax, required=required, raw=RAW)
    pieces: list[object] = []
    for i in range(0, len(text), step):
        pieces += s.feed(text[i:i + step])
    pieces += s.close()
    return s, pieces


def grammar(syntax: CallSyntax, mode: str = "required") -> str:
    return tool_calls_gbnf([ToolSchema(t.name, t.parameters) for t in TOOLS],
                           mode=mode, parallel=True, syntax=syntax).gbnf  # type: ignore[arg-type]


@pytest.mark.parametrize("name", CASES)
def test_each_template_is_read_as_the_format_it_teaches(name: str) -> None:
    fmt = detect((TEMPLATES / name).read_text(encoding="utf-8"))
    assert (fmt.name if fmt else None) == CASES[name]
    t = template(name)
    assert t.knows_format is (CASES[name] is not None)
    assert t.format.name == (CASES[name] or "hermes")


@pytest.mark.parametrize("name", [n for n, f in CASES.items() if f is not None])
def test_the_template_writes_calls_as_the_format_does_and_the_splitter_reads_them(
        name: str) -> None:
    t = template(name)
    syntax = t.format.syntax
    calls = calls_for(syntax)
    ours = render_calls(calls, syntax)
    whole = rendered(t, calls)
    assert ours in whole, (ours, whole)
    assert accepts(parse_gbnf(grammar(syntax)), ours)
    for step in (1, 3, 7, len(ours)):
        s, _ = split(ours, syntax, step)
        got = [(c.name, json.loads(c.arguments)) for c in s.reply.calls]
        assert got == [(c.name, json.loads(c.arguments)) for c in calls]
        assert s.reply.complete == [True] * len(calls)
        assert s.reply.text == ""


@pytest.mark.parametrize("fmt", list(BY_NAME))
def test_a_reply_cut_anywhere_gives_each_call_a_json_prefix_and_never_wrapper_text(
        fmt: str) -> None:
    syntax = BY_NAME[fmt].syntax
    calls = calls_for(syntax)
    whole = render_calls(calls, syntax)
    for cut in range(len(whole) + 1):
        for step in (1, 5):
            s, pieces = split(whole[:cut], syntax, step, required=True)
            for i, call in enumerate(s.reply.calls):
                assert calls[i].arguments.startswith(call.arguments), (cut, call.arguments)
                streamed = "".join(p.text for p in pieces
                                   if isinstance(p, CallArguments) and p.index == i)
                assert streamed == call.arguments
            assert s.reply.text == ""  # nothing of the wrapper leaks into the content


@pytest.mark.parametrize("fmt", list(BY_NAME))
def test_auto_mode_admits_text_or_calls_and_the_splitter_keeps_the_text(fmt: str) -> None:
    syntax = BY_NAME[fmt].syntax
    g = parse_gbnf(grammar(syntax, "auto"))
    calls = calls_for(syntax)
    assert accepts(g, "It is sunny.")
    assert accepts(g, "Let me look. " + render_calls(calls, syntax))
    assert not accepts(g, "Sure " + syntax.trigger + "nonsense")
    s, _ = split("Let me look. " + render_calls(calls, syntax), syntax, 4)
    assert s.reply.text == "Let me look. "
    assert [c.name for c in s.reply.calls] == [c.name for c in calls]


@pytest.mark.parametrize("fmt", [f for f in BY_NAME if BY_NAME[f].syntax.parallel])
def test_a_repeated_call_is_dropped_and_never_streamed(fmt: str) -> None:
    syntax = BY_NAME[fmt].syntax
    first = ToolCall("a", "get_time", '{"tz": "Europe/Paris"}')
    other = ToolCall("b", "get_time", '{"tz": "Europe/Oslo"}')
    text = render_calls([first, other, first, other], syntax)
    for step in (1, 4, len(text)):
        s, pieces = split(text, syntax, step)
        assert [c.arguments for c in s.reply.calls] == [first.arguments, other.arguments]
        assert s.repeated
        starts = [p for p in pieces if isinstance(p, CallStart)]
        ends = [p for p in pieces if isinstance(p, CallEnd)]
        assert len(starts) == len(ends) == 2
        args = ["".join(p.text for p in pieces if isinstance(p, CallArguments) and p.index == i)
                for i in range(2)]
        assert args == [first.arguments, other.arguments]


def test_a_call_that_starts_like_an_earlier_one_streams_once_it_differs() -> None:
    syntax = BY_NAME["hermes"].syntax
    first = ToolCall("a", "get_time", '{"tz": "Europe/Paris"}')
    text = render_calls([first, ToolCall("b", "get_time", '{"tz": "Europe/Pisa"}')], syntax)
    s = ReplySplitter(tools=True, reasoning=False, syntax=syntax, raw=RAW)
    head = text[:text.rindex("Pisa")]
    pieces = s.feed(head)
    assert not any(isinstance(p, CallStart) and p.index == 1 for p in pieces)  # held back
    pieces = s.feed("Pi")
    assert any(isinstance(p, CallStart) and p.index == 1 for p in pieces)


def test_mistral_history_gets_nine_letter_ids_and_the_tool_result_the_same_one() -> None:
    t = template("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    call = ToolCall("call_0123456789abcdef", "get_time", '{"tz": "UTC"}')
    prompt = t.render([Message("user", "Time?"), Message("assistant", "", tool_calls=(call,)),
                       Message("tool", "12:00", tool_call_id=call.id)], tools=TOOLS)
    ids = {prompt[i + 7:i + 16] for i in range(len(prompt)) if prompt.startswith('"id": "', i)}
    ids |= {prompt[i + 12:i + 21] for i in range(len(prompt))
            if prompt.startswith('"call_id": "', i)}
    assert len(ids) == 1
    assert all(len(x) == 9 and x.isalnum() for x in ids)


def test_tojson_keeps_key_order_and_does_not_escape_html() -> None:
    t = ChatTemplate("t", "{{ messages[0] | tojson }}")
    assert t.render([Message("user", "<b>&</b>")], add_generation_prompt=False) == \
        '{"role": "user", "content": "<b>&</b>"}'


def test_a_forced_format_the_template_does_not_teach_goes_into_the_system_message() -> None:
    source = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    t = ChatTemplate("qwen", source, tool_format="mistral-nemo")
    assert not t.renders_tools
    prompt = t.render([Message("user", "Time?")], tools=TOOLS)
    assert "[TOOL_CALLS][" in prompt
    assert "<tool_call>" not in prompt


@pytest.mark.parametrize("fmt", list(BY_NAME))
def test_whitespace_the_arguments_grammar_ends_with_stays_out_of_the_content(fmt: str) -> None:
    syntax = BY_NAME[fmt].syntax
    text = render_calls(calls_for(syntax), syntax)
    for c in calls_for(syntax):
        args = json.dumps(json.loads(c.arguments), ensure_ascii=False)
        text = text.replace(args, args[:-1] + " } \n")
    s, _ = split(text, syntax, 3, required=True)
    assert s.reply.text == ""
    assert [c.name for c in s.reply.calls] == [c.name for c in calls_for(syntax)]


def test_a_cut_inside_a_wrapper_character_is_no_text() -> None:
    syntax = BY_NAME["deepseek-r1"].syntax
    text = render_calls(CALLS, syntax)
    s, _ = split(text[:-len(syntax.block_close) + 5] + "\ufffd", syntax, 4, required=True)
    assert s.reply.text == ""
    assert len(s.reply.calls) == 2


@pytest.mark.parametrize("opened", [False, True])
def test_a_thinking_block_may_come_before_a_forced_call_and_is_split_off(opened: bool) -> None:
    from app.tools import answer_part
    from grammar.tools import after_thinking

    syntax = BY_NAME["hermes"].syntax
    g = parse_gbnf(after_thinking(grammar(syntax), opened=opened))
    call = render_calls(CALLS[:1], syntax)
    thought = ("" if opened else "<think>") + "Paris, so the weather tool.</think>\n"
    assert accepts(g, thought + call)
    assert accepts(g, call) is not opened  # the opened block must be closed first
    assert not accepts(g, thought + "Sure! " + call)  # after the block: the call, nothing else
    assert not accepts(g, thought + thought + call)  # one block
    s = ReplySplitter(tools=True, reasoning=True, thinking_open=opened, syntax=syntax,
                      required=True)
    pieces = []
    for i in range(0, len(thought + call), 3):
        pieces += s.feed((thought + call)[i:i + 3])
    pieces += s.close()
    assert s.reply.reasoning == "Paris, so the weather tool."
    assert [c.name for c in s.reply.calls] == ["get_weather"]
    assert s.reply.text == ""
    assert answer_part(thought + '{"a": 1}', opened=opened) == '{"a": 1}'


@pytest.mark.parametrize("fmt", [f for f in BY_NAME if BY_NAME[f].syntax.parallel])
def test_the_engine_watch_ends_a_reply_at_its_first_repeated_call(fmt: str) -> None:
    from app.tools import RepeatWatch

    syntax = BY_NAME[fmt].syntax
    first = ToolCall("a", "get_time", '{"tz": "Europe/Paris"}')
    text = render_calls([first, CALLS[0], first], syntax)
    watch = RepeatWatch(syntax, required=True, thinking="", raw=RAW)
    ended = [i for i in range(len(text)) if watch(text[i])]
    assert ended
    seen = text[:ended[0] + 1]
    assert seen.count(syntax.call_open) == 3  # not before the third call
    assert seen.endswith(("}", "</function>"))  # at the end of its arguments
