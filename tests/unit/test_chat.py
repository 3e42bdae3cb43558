"""Chat templates: built-ins, files, the sandbox, system prompts and prefill."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.chat import BUILTINS, ChatTemplate, Message, select
from app.errors import InvalidRequest

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
