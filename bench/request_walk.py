"""The walk of one chat body through the code, from the wire dict to the typed request the
engine gets (issue 24's measure of an API layer that hands a body around).

Runs the OpenAI chat route's parsing (``openai_request``, ``messages``, ``tools_from``,
``chat_request`` with a built-in template; no model, no socket) under ``sys.setprofile`` and
prints the modules of ``app`` and ``grammar`` its calls visit, in order: a *stay* is a run of
calls in one module, a *climb back* a return to a module visited before.

    .venv/bin/python bench/request_walk.py [CHECKOUT]

``CHECKOUT`` (default: this one) is a folder holding ``app/``: a ``git worktree`` of an
older commit gives the walk before a change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1]))

from app.api.chatbody import messages, openai_request, tools_from
from app.api.openai import reasoning_from, rendering_from
from app.chat import select
from app.requests import Defaults
from app.turns import chat_request

BODY = {"model": "m", "messages": [{"role": "user", "content": "Jane Doe, 42, lives in Lyon."}],
        "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "schema": {"type": "object", "properties": {
                "name": {"type": "string"}, "age": {"type": "integer"}}}}}}


def main() -> None:
    chat = select(file=None, name="chatml", gguf_template=None, architecture="bench",
                  bos_token="", eos_token="")
    stays: list[str] = []

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        module = str(frame.f_globals.get("__name__", ""))
        if event == "call" and module.startswith(("app", "grammar")) and (
                not stays or stays[-1] != module):
            stays.append(module)

    sys.setprofile(profile)
    try:
        base = openai_request(BODY, Defaults(), prompt="", n_probs=0, extra_stops=chat.stops)
        chat_request(chat, messages(BODY), tools_from(BODY), base, system_prompt=None,
                     reasoning=reasoning_from(BODY, "auto"), variables={},
                     rendering=rendering_from(BODY))
    finally:
        sys.setprofile(None)
    seen: set[str] = set()
    climbs = 0
    for module in stays:
        climbs += module in seen
        seen.add(module)
    print(f"{len(stays)} stays in {len(seen)} modules, {climbs} climbs back")
    print(" -> ".join(stays))


if __name__ == "__main__":
    main()
