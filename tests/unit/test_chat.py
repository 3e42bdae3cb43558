"""Chat templates: built-ins, files, the sandbox, system prompts and prefill."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.builtin_templates import BUILTINS
from app.chat import ChatTemplate, Message, Rendering, select
from app.completion import FunctionTool
from app.errors import InvalidRequest
from app.tools import ToolCall

CONVO = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"),
         Message("user", "Bye")]


def pick(**kw: object) -> ChatTemplate:
    args: dict[str, object] = {"file": None, "name": None, "gguf_template": None,
                               "architecture": "gemma3", "bos_token": "<bos>", "eos_token": "<eos>"}
    args.update(kw)
    return select(**args)  # type: ignore[arg-type]


def test_architecture_default_for_gemma() -> None:
    t = pick()
    assert t.name == "gemma"
    assert t.prompt(CONVO) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!"
        "<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert pick(architecture="qwen2").name == "chatml"


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_renders_the_conversation(name: str) -> None:
    text = pick(name=name).prompt(CONVO)
    assert "Be brief." in text
    assert "Hello!" in text
    assert text.index("Hi") < text.index("Bye")


def test_builtin_aliases_and_unknown_names() -> None:
    assert pick(name="vicuna").name == "vicuna_v1.1"
    with pytest.raises(ValueError, match="unknown chat template"):
        pick(name="nope")


def test_gguf_template_wins_over_architecture_and_file_over_all(tmp_path: Path) -> None:
    gguf = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    assert pick(gguf_template=gguf).prompt([Message("user", "x")]) == "[user]x"
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[-1].content | upper }}")
    assert pick(gguf_template=gguf, file=f).prompt([Message("user", "x")]) == "X"
    assert pick(gguf_template=gguf, name="chatml").name == "chatml"


def test_system_prompt_only_when_the_chat_has_none() -> None:
    t = pick(name="chatml")
    with_default = t.prompt([Message("user", "Hi")], system_prompt="You are Sluice.")
    assert with_default.startswith("<|im_start|>system\nYou are Sluice.<|im_end|>")
    own = t.prompt([Message("developer", "Mine."), Message("user", "Hi")], system_prompt="Other")
    assert "Mine." in own
    assert "Other" not in own
    assert "<|im_start|>system" in own


def test_trailing_assistant_message_is_continued() -> None:
    t = pick(name="chatml")
    text = t.prompt([Message("user", "List fruits."), Message("assistant", "1. Apple\n2.")])
    assert text.endswith("<|im_start|>assistant\n1. Apple\n2.")


def test_template_errors_are_400s() -> None:
    raising = pick(gguf_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        raising.prompt([Message("user", "x")])
    sneaky = pick(gguf_template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidRequest):
        sneaky.prompt([Message("user", "x")])
    with pytest.raises(ValueError, match="does not compile"):
        pick(gguf_template="{% for %}")


LLAMA3_LIKE = ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
               "{{ m.content }}<|eot_id|>{% endfor %}")


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ '<|im_start|>' + m.role }}", "chatml"),
    ("<start_of_turn>user", "gemma"),
    (LLAMA3_LIKE, "llama-3"),
    ("[INST] <<SYS>>", "llama-2"),
    ("[INST] {{ m.content }} [/INST]", "mistral"),
    ("<|user|>{{ m }}<|end|><|assistant|>", "phi-3"),
    ("<|user|>{{ m }}</s>", "zephyr"),
    ("{{ 'USER: ' + m }} ASSISTANT:", "vicuna_v1.1"),
])
def test_no_jinja_uses_the_builtin_the_model_template_looks_like(source: str,
                                                                  expected: str) -> None:
    t = pick(gguf_template=source, jinja=False)
    assert t.name == expected
    assert t.source == BUILTINS[expected].source  # the model's own template is not run
    assert t.tools is False
    assert pick(gguf_template=source).tools is True  # with Jinja (the default) it is run


def test_no_jinja_falls_back_to_the_architecture_and_names_win(tmp_path: Path) -> None:
    assert pick(gguf_template="{{ weird }}", jinja=False).name == "gemma"
    assert pick(gguf_template="<|im_start|>", name="zephyr", jinja=False).name == "zephyr"
    file = tmp_path / "t.jinja"
    file.write_text(LLAMA3_LIKE)
    assert pick(file=file, jinja=False).name == "llama-3"
    with pytest.raises(ValueError, match="unknown chat template"):
        pick(name="nope", jinja=False)


DATA = Path(__file__).resolve().parents[1] / "data" / "templates"


def test_command_r_builtin_is_llama_cpps() -> None:
    text = pick(name="command-r").prompt([Message("system", "You are a test."),
                                          Message("user", "Hi there")])
    assert text == ("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|>"
                    "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
                    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")


def test_the_end_of_the_conversation_as_the_body_asks() -> None:
    t = pick(name="llama-3", bos_token="")
    ask = [Message("user", "What is the best book")]
    opening = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert t.prompt(ask).endswith(opening)
    assert not t.prompt(ask, rendering=Rendering(add_generation_prompt=False)).endswith(opening)
    prefill = [*ask, Message("assistant", "Whill")]
    continued = t.prompt(prefill)  # llama.cpp's assistant prefill: continued in place
    assert continued.endswith(opening + "Whill")
    # vLLM's explicit form gives the same prompt
    assert t.prompt(prefill, rendering=Rendering(False, True)) == continued
    assert t.prompt(prefill, rendering=Rendering(None, True)) == continued
    # not continued: the assistant turn closes and a new one opens
    closed = t.prompt(prefill, rendering=Rendering(None, False))
    assert closed.endswith("Whill<|eot_id|>" + opening)
    for rendering, where in ((Rendering(True, True), "continue_final_message"),
                             (Rendering(None, True), "continue_final_message")):
        convo = prefill if rendering.add_generation_prompt else ask
        with pytest.raises(InvalidRequest) as info:
            t.prompt(convo, rendering=rendering)
        assert info.value.param == where
    with pytest.raises(InvalidRequest, match="2 or more assistant messages"):
        t.prompt([*prefill, Message("assistant", "again")])


def test_templates_get_todays_date_and_past_reasoning() -> None:
    import datetime

    llama = ChatTemplate("llama", (DATA / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text())
    today = datetime.date.today().strftime("%d %b %Y")
    assert f"Today Date: {today}" in llama.prompt([Message("user", "What is today?")])
    # FireFunction's template reads ``functions`` and ``datetime``, which only the server gives
    fire = ChatTemplate("fire", (DATA / "fireworks-ai-llama-3-firefunction-v2.jinja").read_text())
    weather = FunctionTool("get_weather", "Weather in a city",
                           {"type": "object", "properties": {"city": {"type": "string"}}}, "tools[0]")
    for tools in ((), (weather,)):
        text = fire.prompt([Message("user", "What is today?")], tools=tools)
        assert "Today is " + datetime.date.today().strftime("%b %d %Y") + "." in text
        assert ("get_weather" in text) == bool(tools)  # in the fallback format's instructions
    qwen3 = ChatTemplate("qwen3", (DATA / "Qwen-Qwen3-0.6B.jinja").read_text())
    call = ToolCall("call_1", "ls", "{}")
    convo = [Message("user", "Fix it"),  # thinking after the last question is shown
             Message("assistant", "", (call,), reasoning="Look first."),
             Message("tool", "main.py", tool_call_id="call_1", name="ls")]
    assert "<think>\nLook first.\n</think>\n\n<tool_call>" in qwen3.prompt(convo)
    r1 = ChatTemplate("r1", (DATA / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text())
    ask = [Message("user", "Hi")]
    assert r1.prompt(ask, variables={"enable_thinking": True}).endswith("<think>\n")
    assert r1.prompt(ask, variables={"enable_thinking": False}).endswith("<think>\n</think>")
