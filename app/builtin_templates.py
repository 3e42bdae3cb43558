"""The built-in chat templates (``--chat-template NAME``, and the default for a GGUF without
one, by its architecture): small Jinja sources in the shapes llama.cpp's built-ins render."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Builtin:
    source: str
    stops: tuple[str, ...]  # turn markers the model may write as plain text


_GEMMA = (
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- set sys = messages | selectattr('role', 'equalto', 'system') "
    "| map(attribute='content') | list -%}"
    "{%- set ns.system = (sys | join('\n\n') + '\n\n') if sys else '' -%}"
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
    "{%- set ns.system = messages | selectattr('role', 'equalto', 'system') "
    "| map(attribute='content') | join -%}"
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
    "{%- set ns.system = messages | selectattr('role', 'equalto', 'system') "
    "| map(attribute='content') | join -%}"
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
    "{%- set sys = messages | selectattr('role', 'equalto', 'system') "
    "| map(attribute='content') | list -%}"
    "{%- set ns.system = (sys | join('\n\n') + '\n\n') if sys else '' -%}"
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
_COMMAND_R = (  # Cohere's Command R (llama.cpp's built-in "command-r")
    "{%- set roles = {'system': 'SYSTEM', 'user': 'USER', 'assistant': 'CHATBOT'} -%}"
    "{%- for m in messages -%}"
    "{{ '<|START_OF_TURN_TOKEN|><|' + roles.get(m.role, 'USER') + '_TOKEN|>' + m.content | trim"
    " + '<|END_OF_TURN_TOKEN|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif -%}"
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
    "command-r": Builtin(_COMMAND_R, ("<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>")),
}
ALIASES = {"vicuna": "vicuna_v1.1", "llama2": "llama-2", "llama3": "llama-3", "phi3": "phi-3"}
BY_ARCHITECTURE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
                   "llama": "llama-2", "mistral": "mistral", "phi3": "phi-3"}
