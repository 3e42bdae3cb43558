"""Chat templates: messages to a prompt.

The template is, in order of precedence: ``--chat-template-file``, a built-in
named by ``--chat-template``, the GGUF's ``tokenizer.chat_template``, or the
built-in for the model's architecture (the default Gemma 3 model ships none:
it gets ``gemma``). Templates are Jinja, rendered in a sandbox
(``ImmutableSandboxedEnvironment``): a template cannot reach Python objects or
change its inputs. A template that raises (``raise_exception``) for the given
messages is a 400.

A trailing assistant message is a prefill: the history before it is rendered
with the generation prompt, and the assistant text is appended unclosed, so
the model continues it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # one of ROLES ("developer" is treated as "system")
    content: str


@dataclass(frozen=True, slots=True)
class Builtin:
    source: str
    stops: tuple[str, ...]  # turn markers the model may write as plain text


_GEMMA = (
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set ns.system = ns.system + m.content + '\n\n' -%}{%- endfor -%}"
    "{{ bos_token }}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\n' }}"
    "{%- if ns.first and m.role == 'user' %}{{ ns.system }}{% endif -%}"
    "{%- set ns.first = false -%}"
    "{{ m.content + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif -%}"
)
_CHATML = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
)
_LLAMA2 = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set ns.system = ns.system + m.content -%}{%- endfor -%}"
    "{%- set ns.first = true -%}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{%- if m.role == 'user' -%}"
    "{{ bos_token + '[INST] ' }}"
    "{%- if ns.first and ns.system %}{{ '<<SYS>>\n' + ns.system + '\n<</SYS>>\n\n' }}{% endif -%}"
    "{{ m.content + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + m.content + ' ' + eos_token }}{%- endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endfor -%}"
)
_VICUNA = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set ns.system = ns.system + m.content -%}{%- endfor -%}"
    "{%- if ns.system %}{{ ns.system + '\n\n' }}{% endif -%}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{%- if m.role == 'user' %}{{ 'USER: ' + m.content + '\n' }}"
    "{%- else %}{{ 'ASSISTANT: ' + m.content + eos_token + '\n' }}{% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif -%}"
)
_LLAMA3 = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif -%}"
)
_ZEPHYR = (
    "{%- for m in messages -%}"
    "{{ '<|' + m.role + '|>\n' + m.content + eos_token + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif -%}"
)
_MISTRAL = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set ns.system = ns.system + m.content + '\n\n' -%}{%- endfor -%}"
    "{%- set ns.first = true -%}"
    "{%- for m in messages if m.role != 'system' -%}"
    "{%- if m.role == 'user' -%}"
    "{{ '[INST] ' + (ns.system if ns.first else '') + m.content + ' [/INST]' }}"
    "{%- else %}{{ m.content + eos_token }}{% endif -%}"
    "{%- set ns.first = false -%}"
    "{%- endfor -%}"
)
_PHI3 = (
    "{%- for m in messages -%}"
    "{{ '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif -%}"
)

BUILTINS: dict[str, Builtin] = {
    "gemma": Builtin(_GEMMA, ("<end_of_turn>", "<start_of_turn>")),
    "chatml": Builtin(_CHATML, ("<|im_end|>", "<|im_start|>")),
    "llama-2": Builtin(_LLAMA2, ("[INST]", "</s>")),
    "vicuna_v1.1": Builtin(_VICUNA, ("USER:", "</s>")),
    "llama-3": Builtin(_LLAMA3, ("<|eot_id|>", "<|start_header_id|>")),
    "zephyr": Builtin(_ZEPHYR, ("</s>", "<|user|>")),
    "mistral": Builtin(_MISTRAL, ("[INST]", "</s>")),
    "phi-3": Builtin(_PHI3, ("<|end|>", "<|user|>")),
}
ALIASES = {"vicuna": "vicuna_v1.1", "llama2": "llama-2", "llama3": "llama-3", "phi3": "phi-3"}
BY_ARCHITECTURE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
                   "llama": "llama-2", "mistral": "mistral", "phi3": "phi-3"}


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, name: str, source: str, *, stops: tuple[str, ...] = (),
                 bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            undefined=jinja2.StrictUndefined)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"chat template {name!r} does not compile: {exc}") from None
        self.name = name
        self.source = source
        self.stops = stops
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages``.

        Raises:
            InvalidRequest: the template refused the messages.
        """
        try:
            return self._template.render(
                messages=[{"role": "system" if m.role == "developer" else m.role,
                           "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the chat template refused the messages: {exc}",
                                 param="messages") from None

    def prompt(self, messages: list[Message], system_prompt: str | None = None) -> str:
        """Render a conversation; a trailing assistant message is continued (prefill)."""
        if system_prompt and not any(m.role in ("system", "developer") for m in messages):
            messages = [Message("system", system_prompt), *messages]
        if messages and messages[-1].role == "assistant":
            return self.render(messages[:-1]) + messages[-1].content
        return self.render(messages)


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def select(*, file: Path | None, name: str | None, gguf_template: str | None, architecture: str,
           bos_token: str, eos_token: str) -> ChatTemplate:
    """Pick the chat template by the precedence in the module docstring.

    Raises:
        ValueError: an unknown built-in name, or a template that does not compile.
    """
    if file is not None:
        return ChatTemplate(f"file:{file.name}", file.read_text(encoding="utf-8"),
                            bos_token=bos_token, eos_token=eos_token)
    if name is not None:
        key = ALIASES.get(name, name)
        if key not in BUILTINS:
            raise ValueError(f"unknown chat template {name!r}; built-ins: "
                             f"{', '.join(builtin_names())}")
        b = BUILTINS[key]
        return ChatTemplate(key, b.source, stops=b.stops, bos_token=bos_token, eos_token=eos_token)
    if gguf_template:
        return ChatTemplate("gguf", gguf_template, bos_token=bos_token, eos_token=eos_token)
    key = BY_ARCHITECTURE.get(architecture, "chatml")
    b = BUILTINS[key]
    return ChatTemplate(key, b.source, stops=b.stops, bos_token=bos_token, eos_token=eos_token)
