"""Tool-call grammars, the reply splitter, and chat templates with tools (no model needed)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.chat import ChatTemplate, Message
from app.completion import FunctionTool
from app.errors import InvalidRequest
from app.tools import (
    CallArguments,
    CallEnd,
    CallStart,
    ReasoningPiece,
    ReplySplitter,
    TextPiece,
    ToolCall,
)
from app.turns import ToolPolicy, check_calls, tool_policy
from grammar import accepts, parse_gbnf
from grammar.errors import SchemaError
from grammar.gbnf_checks import check
from grammar.tools import ToolSchema, excluding, tool_calls_gbnf

WEATHER = ToolSchema("get_weather", {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]})
ADD = ToolSchema("add", {"type": "object", "properties": {"a": {"type": "integer"},
                                                        "b": {"type": "integer"}},
                         "required": ["a", "b"]})


CALL_OPEN = "<tool_call>\n"


def call_text(name: str, args: str) -> str:
    return f'{CALL_OPEN}{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def grammar(mode: str, parallel: bool = True) -> str:
    return tool_calls_gbnf([WEATHER, ADD], mode=mode,  # type: ignore[arg-type]
                           parallel=parallel).gbnf


def test_required_grammar_admits_calls_and_nothing_else() -> None:
    g = parse_gbnf(grammar("required"))
    one = call_text("get_weather", '{"city": "Paris", "unit": "c"}')
    assert accepts(g, one)
    assert accepts(g, one + "\n" + call_text("add", '{"a": 1, "b": 2}'))
    assert not accepts(g, "Sure! " + one)  # no text around a required call
    assert not accepts(g, call_text("get_weather", '{"city": "Paris"}'))  # unit is required
    assert not accepts(g, call_text("delete_all", "{}"))  # not a declared tool
    assert not accepts(g, call_text("add", '{"a": "one", "b": 2}'))
    assert not accepts(g, "")


def test_single_call_when_parallel_is_off() -> None:
    g = parse_gbnf(grammar("required", parallel=False))
    one = call_text("add", '{"a": 1, "b": 2}')
    assert accepts(g, one)
    assert not accepts(g, one + "\n" + one)


def test_auto_grammar_admits_text_or_calls_but_never_a_bad_call() -> None:
    g = parse_gbnf(grammar("auto"))
    assert accepts(g, "It is sunny in Paris.")
    assert accepts(g, "")
    assert accepts(g, "Let me check.\n" + call_text("add", '{"a": 1, "b": 2}'))
    assert accepts(g, "a < b and <tool_use> are plain text")
    assert not accepts(g, "Let me check.\n" + CALL_OPEN + '{"name": "add", "arguments": {}}')
    assert not accepts(g, call_text("add", '{"a": 1, "b": 2}') + " and some text after")


def test_tool_grammars_pass_the_gbnf_check() -> None:
    for mode, parallel in itertools.product(("auto", "required"), (True, False)):
        check(parse_gbnf(grammar(mode, parallel)))


def test_tools_with_refs_keep_their_own_documents() -> None:
    a = ToolSchema("a", {"$defs": {"x": {"type": "integer"}}, "type": "object",
                         "properties": {"v": {"$ref": "#/$defs/x"}}, "required": ["v"]})
    b = ToolSchema("b", {"$defs": {"x": {"type": "string"}}, "type": "object",
                         "properties": {"v": {"$ref": "#/$defs/x"}}, "required": ["v"]})
    g = parse_gbnf(tool_calls_gbnf([a, b], mode="required", parallel=False).gbnf)
    assert accepts(g, call_text("a", '{"v": 1}'))
    assert accepts(g, call_text("b", '{"v": "s"}'))
    assert not accepts(g, call_text("a", '{"v": "s"}'))
    assert not accepts(g, call_text("b", '{"v": 1}'))


def test_a_bad_tool_schema_names_its_tool() -> None:
    bad = ToolSchema("broken", {"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(SchemaError) as info:
        tool_calls_gbnf([ADD, bad], mode="auto", parallel=True)
    assert info.value.index == 1
    assert info.value.pointer == "/properties/a/type"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="<tool_cal>\nxy ", max_size=40))
def test_excluding_matches_exactly_the_texts_without_the_tag(text: str) -> None:
    start, rules = excluding(CALL_OPEN, "t")
    g = parse_gbnf(f"root ::= {start}\n" + "".join(f"{k} ::= {v}\n" for k, v in rules.items()))
    assert accepts(g, text) == (CALL_OPEN not in text)


# --- the splitter ----------------------------------------------------------------------------
def split(text: str, *, step: int, tools: bool = True, reasoning: bool = True,
          thinking_open: bool = False) -> tuple[ReplySplitter, list[object]]:
    ids = (f"id{i}" for i in itertools.count())
    s = ReplySplitter(tools=tools, reasoning=reasoning, thinking_open=thinking_open,
                      new_id=lambda: next(ids))
    pieces: list[object] = []
    for i in range(0, len(text), step):
        pieces += s.feed(text[i:i + step])
    pieces += s.close()
    return s, pieces


REPLY = ("<think>\nThe user wants weather.\n</think>\n\nChecking.\n"
         + call_text("get_weather", '{\n  "city": "Paris",\n  "unit": "c"\n}') + "\n"
         + call_text("add", '{"a": 1, "b": 2}'))


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_splitter_gives_the_same_reply_whatever_the_chunking(step: int) -> None:
    s, pieces = split(REPLY, step=step)
    reply = s.reply
    assert reply.reasoning == "\nThe user wants weather.\n"
    assert reply.text == "Checking.\n"
    assert [c.name for c in reply.calls] == ["get_weather", "add"]
    assert [json.loads(c.arguments) for c in reply.calls] == [{"city": "Paris", "unit": "c"},
                                                              {"a": 1, "b": 2}]
    assert reply.complete == [True, True]
    # the streamed pieces add up to the reply, names before arguments, one end per call
    assert "".join(p.text for p in pieces if isinstance(p, TextPiece)) == reply.text
    assert "".join(p.text for p in pieces if isinstance(p, ReasoningPiece)) == reply.reasoning
    for index, call in enumerate(reply.calls):
        kinds = [p for p in pieces if getattr(p, "index", None) == index]
        assert kinds[0] == CallStart(index, f"id{index}", call.name)
        assert kinds[-1] == CallEnd(index)
        assert "".join(p.text for p in kinds if isinstance(p, CallArguments)) == call.arguments


def test_no_tag_text_is_never_held_back_longer_than_needed() -> None:
    s = ReplySplitter(tools=True, reasoning=False)
    assert s.feed("Hello <to") == [TextPiece("Hello ")]
    assert s.feed("day") == [TextPiece("<today")]


def test_thinking_opened_by_the_template() -> None:
    s, _ = split("plan it</think>Answer.", step=4, thinking_open=True)
    assert (s.reply.reasoning, s.reply.text) == ("plan it", "Answer.")


def test_reasoning_off_keeps_the_tags_in_the_text() -> None:
    s, _ = split("<think>x</think>y", step=2, tools=False, reasoning=False)
    assert s.reply.text == "<think>x</think>y"


def test_a_call_cut_off_is_reported_incomplete() -> None:
    s, _pieces = split(CALL_OPEN + '{"name": "add", "arguments": {"a": 1', step=5)
    assert s.reply.complete == [False]
    assert s.reply.calls[0].arguments == '{"a": 1'
    policy = ToolPolicy((FunctionTool("add", "", ADD.parameters, "tools[0]"),), "required")
    [check] = check_calls(s.reply, policy)
    assert not check.valid
    assert "cut off" in check.errors[0]


def test_check_calls_reports_what_the_grammar_could_not_enforce() -> None:
    schema = {"type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}
    policy = ToolPolicy((FunctionTool("f", "", schema, "tools[0]"),), "required")
    s, _ = split(call_text("f", '{"xs": [1, 1]}'), step=100)
    [check] = check_calls(s.reply, policy)
    assert not check.valid
    assert "/xs" in check.errors[0]


def test_tool_policy_refuses_unknown_and_duplicate_tools() -> None:
    t = FunctionTool("f", "", {}, "tools[0]")
    with pytest.raises(InvalidRequest, match="not in 'tools'"):
        tool_policy((t,), "auto", "g", True, choice_field="tool_choice")
    with pytest.raises(InvalidRequest, match="two tools"):
        tool_policy((t, t), "auto", "", True, choice_field="tool_choice")
    with pytest.raises(InvalidRequest, match="'tools' is empty"):
        tool_policy((), "required", "", True, choice_field="tool_choice")


# --- templates -------------------------------------------------------------------------------
HF_TOOLS = (
    "{#- calls go in <tool_call></tool_call> tags -#}"
    "{%- if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif -%}"
    "{%- for m in messages -%}"
    "{{ m.role }}:{{ m.content }}"
    "{%- if m.tool_calls %}{% for c in m.tool_calls %}[{{ c.function.name }}"
    "({{ c.function.arguments.city }})]{% endfor %}{% endif -%}"
    "{%- if m.role == 'tool' %}#{{ m.tool_call_id }}{% endif %}\n"
    "{%- endfor -%}"
)
HISTORY = [Message("user", "Weather?"),
           Message("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
           Message("tool", "sunny", tool_call_id="c1", name="get_weather")]
TOOL = FunctionTool("get_weather", "weather", WEATHER.parameters, "tools[0]")


def test_a_template_that_reads_tools_gets_them_as_hugging_face_passes_them() -> None:
    t = ChatTemplate("hf", HF_TOOLS)
    assert t.renders_tools
    out = t.render(HISTORY, tools=[TOOL], add_generation_prompt=False)
    assert out == "TOOLS:get_weather;user:Weather?assistant:[get_weather(Paris)]tool:sunny#c1"


def test_a_plain_template_gets_instructions_calls_and_results_as_text() -> None:
    chatml = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
              "{% endfor %}")
    t = ChatTemplate("chatml", chatml)
    assert not t.renders_tools
    out = t.render(HISTORY, tools=[TOOL], add_generation_prompt=False)
    assert out.startswith("<|im_start|>system\nYou can call functions.")
    assert '"name": "get_weather"' in out
    assert call_text("get_weather", '{"city": "Paris"}') in out
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in out


def test_strict_tools_close_their_arguments_and_others_stay_open() -> None:
    from app.api.anthropic import policy
    from app.api.chatbody import tools_from
    from app.prepare import tools_grammar

    params = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    body = {"tools": [{"type": "function", "function": {"name": "open", "parameters": params}},
                      {"type": "function", "function": {"name": "shut", "parameters": params,
                                                        "strict": True}}],
            "tool_choice": "required"}
    openai_policy = tools_from(body)
    assert [t.strict for t in openai_policy.tools] == [False, True]
    anthropic_policy = policy({"tools": [{"name": "shut", "input_schema": params,
                                          "strict": True}]})
    assert [t.strict for t in anthropic_policy.tools] == [True]
    constraint = openai_policy.constraint()
    assert constraint is not None
    call = '<tool_call>\n{"name": "%s", "arguments": {"q": "x", "extra": 1}}\n</tool_call>'
    # the generation default closes both; the spec shape leaves the non-strict one open
    assert not accepts(tools_grammar(constraint), call % "open")
    gbnf = tools_grammar(constraint, spec=True)
    assert accepts(gbnf, call % "open")
    assert not accepts(gbnf, call % "shut")
    assert not accepts(tools_grammar(constraint, schema_strict=True, spec=True), call % "open")
