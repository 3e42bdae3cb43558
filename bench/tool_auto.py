"""Tool calling with ``tool_choice: "auto"``: does the chat model call when it should, and only then?

Twenty prompts with two tools (a weather lookup and a unit converter): ten need a tool, ten do
not. For each tool-call format (``tests/data/templates``: a real template of that family,
written into a GGUF copy of the embedded chat model, as ``tests/integration/test_tool_formats.py``
does), every prompt is sent once, greedy, through ``/v1/chat/completions``. Printed per format:
calls when one was needed (and whether it named the right tool), no call when none was, calls
whose arguments validate, replies that ended at the token limit.

The model is SmolLM2-135M-Instruct, trained on none of these templates: the figures say how
much each format's prompt and grammar help a tiny model, not how the families' own models do.

    .venv/bin/python bench/tool_auto.py [--formats hermes,llama3] [--limit 160] [-v]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.test_tool_formats import FORMATS, TEMPLATES, gguf_with_template  # noqa: E402
from tests.serverproc import running_server  # noqa: E402

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
           "required": ["city"], "additionalProperties": False}
CONVERT = {"type": "object", "properties": {
    "value": {"type": "number"}, "from_unit": {"type": "string", "maxLength": 20},
    "to_unit": {"type": "string", "maxLength": 20}},
    "required": ["value", "from_unit", "to_unit"], "additionalProperties": False}
SCHEMAS = {"get_weather": WEATHER, "convert_units": CONVERT}
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                           "description": "The current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "convert_units",
                                           "description": "Convert a value between units",
                                           "parameters": CONVERT}}]
NEEDS = [  # (prompt, the tool it needs)
    ("What is the weather in Paris right now?", "get_weather"),
    ("Is it raining in London today?", "get_weather"),
    ("How warm is it in Madrid?", "get_weather"),
    ("Tell me the current weather for Tokyo.", "get_weather"),
    ("Should I take an umbrella in Berlin today? Check the weather.", "get_weather"),
    ("Convert 10 miles to kilometers.", "convert_units"),
    ("How many pounds is 3 kilograms?", "convert_units"),
    ("What is 100 Fahrenheit in Celsius?", "convert_units"),
    ("Convert 5 liters to gallons.", "convert_units"),
    ("How many inches are 30 centimeters?", "convert_units"),
]
NO_TOOL = [
    "Say hello.",
    "Write a haiku about the sea.",
    "What is the capital of Italy?",
    "Thank you, that is all.",
    "What is 2 plus 2?",
    "Tell me a short joke.",
    "Who wrote Romeo and Juliet?",
    "Give me a synonym for happy.",
    "What colour is the sky on a clear day?",
    "Translate 'good morning' into French.",
]


def ask(client: httpx.Client, prompt: str, limit: int) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": prompt}], "tools": TOOLS,
        "tool_choice": "auto", "temperature": 0, "max_tokens": limit})
    r.raise_for_status()
    choice: dict[str, Any] = r.json()["choices"][0]
    return choice


def valid(call: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            SCHEMAS[call["function"]["name"]])
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def run(fmt: str, limit: int, verbose: bool) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        model = "smollm2-135m-instruct" if fmt == "own" else str(
            gguf_with_template(TEMPLATES / FORMATS[fmt], Path(tmp) / "model.gguf"))
        with running_server("--model", model, "--parallel", "1") as server, \
                httpx.Client(base_url=server.base_url, timeout=600) as client:
            called = right = quiet = good = calls = cut = 0
            for prompt, tool in NEEDS:
                choice = ask(client, prompt, limit)
                names = [c["function"]["name"] for c in choice["message"].get("tool_calls") or []]
                called += bool(names)
                right += bool(names) and names[0] == tool
                calls += len(names)
                good += sum(valid(c) for c in choice["message"].get("tool_calls") or [])
                cut += choice["finish_reason"] == "length"
                if verbose:
                    print(f"  {fmt} need {tool}: {names} {choice['finish_reason']}", flush=True)
            for prompt in NO_TOOL:
                choice = ask(client, prompt, limit)
                names = [c["function"]["name"] for c in choice["message"].get("tool_calls") or []]
                quiet += not names
                calls += len(names)
                good += sum(valid(c) for c in choice["message"].get("tool_calls") or [])
                cut += choice["finish_reason"] == "length"
                if verbose:
                    print(f"  {fmt} none: {names} {choice['finish_reason']} "
                          f"{(choice['message'].get('content') or '')[:60]!r}", flush=True)
    return (f"{fmt:14} {called:>2}/10 called ({right}/10 the right tool)  {quiet:>2}/10 no call"
            f"  {good}/{calls} calls valid  {cut}/20 at the limit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", default=",".join(["own", *FORMATS]),
                        help="'own': the model's own template (Hermes' instructions)")
    parser.add_argument("--limit", type=int, default=160, help="max tokens per reply")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    print(f"{len(NEEDS) + len(NO_TOOL)} prompts, greedy, tool_choice auto, "
          f"at most {args.limit} tokens; model smollm2-135m-instruct")
    for fmt in args.formats.split(","):
        print(run(fmt, args.limit, args.verbose), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
