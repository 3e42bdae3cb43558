"""The tool-call formats models were trained on, and which one a chat template speaks.

Each format is a :class:`~grammar.tools.CallSyntax` (the grammar forces it, the splitter reads
it, history calls are written in it). A model's format is read from its chat template by the
markers below (the ones llama.cpp's and vLLM's parsers key on), first match wins;
``--tool-call-format`` overrides it. A template with no known format (or one whose calls are
not JSON objects or Qwen3-Coder's XML parameters, such as GLM's ``<arg_key>`` pairs, Command-R's
actions, Functionary's; FireFunction's, whose template needs variables only llama.cpp
knows) gets Hermes' format and its instructions in the system message, so the
prompt and the grammar always agree.

=============  ======================================================  =====================
format         a reply with two calls                                  models (templates)
=============  ======================================================  =====================
hermes         ``<tool_call>\\n{"name": "f", "arguments": {…}}\\n</tool_call>``  Qwen 2.5/3,
               then ``\\n`` and the next                                 Hermes, SmolLM3,
                                                                       Granite 4, QwQ
llama3         ``{"name": "f", "parameters": {…}}`` (one call only)    Llama 3.1/3.2/3.3
mistral-nemo   ``[TOOL_CALLS][{"name": "f", "arguments": {…}, "id":    Mistral Nemo
               "a1b2c3d4e"}, {…}]``
mistral        ``[TOOL_CALLS]f[ARGS]{…}[TOOL_CALLS]g[ARGS]{…}``        Mistral Small 3.2,
                                                                       Devstral, Ministral 3
granite        ``<|tool_call|>[{"name": "f", "arguments": {…}}, {…}]``  Granite 3.x
deepseek-r1    ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f``  DeepSeek R1
               ``\\n```json\\n{…}\\n```<｜tool▁call▁end｜>``, ``\\n`` and     and its distills
               the next, ``<｜tool▁calls▁end｜>``
qwen3-coder    ``<tool_call>\n<function=f>\n<parameter=city>\nParis\n``    Qwen3-Coder, Qwen3.5,
               ``</parameter>\n</function>\n</tool_call>``, ``\n`` and the   Nemotron 3 Nano
               next (a string as raw text, other values as JSON)
=============  ======================================================  =====================
"""

from __future__ import annotations

from dataclasses import dataclass

from grammar.tools import HERMES, CallSyntax


@dataclass(frozen=True, slots=True)
class ToolFormat:
    name: str
    syntax: CallSyntax
    #: template text that must all be present, and text that must not be
    needs: tuple[str, ...]
    refuses: tuple[str, ...] = ()
    #: its templates refuse call ids that are not nine letters and digits (Mistral's)
    short_ids: bool = False

    def matches(self, source: str) -> bool:
        return all(m in source for m in self.needs) and not any(m in source for m in self.refuses)


FORMATS: tuple[ToolFormat, ...] = (
    # calls that are not JSON objects: none of the formats here (Hermes' instructions instead)
    ToolFormat("qwen3-coder", CallSyntax(
        block_open="", call_open="<tool_call>\n<function=", quoted=False, name_to_args=">\n",
        call_close="</function>\n</tool_call>", separator="\n", marker="<tool_call>",
        args="xml"), ("<tool_call>", "<function=", "<parameter=")),
    ToolFormat("hermes", HERMES, ("<tool_call>",), ("<function=", "<arg_key>")),
    ToolFormat("mistral", CallSyntax(block_open="", call_open="[TOOL_CALLS]", quoted=False,
                                     name_to_args="[ARGS]", call_close=""),
               ("[TOOL_CALLS]", "[ARGS]"), short_ids=True),
    ToolFormat("mistral-nemo", CallSyntax(
        block_open="[TOOL_CALLS][", call_open='{"name": ', name_to_args=', "arguments": ',
        call_close=', "id": "{id}"}', separator=", ", block_close="]"),
        ("[TOOL_CALLS]",), short_ids=True),
    ToolFormat("granite", CallSyntax(
        block_open="<|tool_call|>[", call_open='{"name": ', name_to_args=', "arguments": ',
        call_close="}", separator=", ", block_close="]"), ("<|tool_call|>", "<|start_of_role|>")),
    ToolFormat("deepseek-r1", CallSyntax(
        block_open="<｜tool▁calls▁begin｜>",
        call_open="<｜tool▁call▁begin｜>function<｜tool▁sep｜>", quoted=False,
        name_to_args="\n```json\n", call_close="\n```<｜tool▁call▁end｜>", separator="\n",
        block_close="<｜tool▁calls▁end｜>"), ("<｜tool▁calls▁begin｜>", "```json")),
    ToolFormat("llama3", CallSyntax(block_open="", call_open='{"name": ',
                                    name_to_args=', "parameters": ', call_close="}",
                                    parallel=False),
               ('"parameters": ', "<|start_header_id|>"), ("<|START_ACTION|>",)),
)

BY_NAME = {f.name: f for f in FORMATS}
NAMES = tuple(BY_NAME)
FALLBACK = BY_NAME["hermes"]


def detect(source: str) -> ToolFormat | None:
    """The format ``source`` (a chat template) teaches its model; None when none here is."""
    for fmt in FORMATS:
        if fmt.matches(source):
            return fmt
    return None
