"""The layering the code keeps, checked from its imports (part of the lint step: it runs in the
suite, without a model).

* No route module (``app/api/*``) imports ``app.engine``: routes see the service
  (``app.service``, ``app.runtime``), never the engine behind it.
* The API families are peers: none imports another. What several of them share lives in
  ``common`` (bodies, responses), ``drive`` (the one loop over a stream's items), ``report``
  (fields several families write) and ``chatbody``
  (the OpenAI-shaped chat body that Ollama's chat translates into). The modules of llama.cpp's
  own surface (``native``, ``extras``, ``models``, ``metrics``) are one family.
* The ``grammar`` package is pure: it imports nothing of ``app`` and no I/O framework.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "app" / "api"
SHARED = {"common", "drive", "report", "chatbody", "__init__"}
FAMILIES = {
    "llama.cpp": {"native", "extras", "models", "metrics"},
    "openai": {"openai"}, "anthropic": {"anthropic"}, "responses": {"responses"},
    "ollama": {"ollama", "ollama_models"}, "goinfer": {"goinfer"}, "kobold": {"kobold"}, "compat": {"compat"},
    "openapi": {"openapi"}, "web": {"web"},
}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def family_of(name: str) -> str:
    return next(f for f, members in FAMILIES.items() if name in members)


def test_every_api_module_is_in_a_family_or_shared() -> None:
    names = {p.stem for p in API.glob("*.py")}
    known = SHARED | set().union(*FAMILIES.values())
    assert names <= known, f"new module(s) {sorted(names - known)}: add them to FAMILIES"


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda p: p.stem)
def test_routes_do_not_touch_the_engine(path: Path) -> None:
    bad = sorted(m for m in imported(path) if m == "app.engine" or m.startswith("app.engine."))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted(API.glob("*.py")), ids=lambda p: p.stem)
def test_families_are_peers(path: Path) -> None:
    if path.stem in SHARED:
        others = {m.removeprefix("app.api.") for m in imported(path) if m.startswith("app.api.")}
        assert others <= SHARED, f"shared module {path.name} imports the families {others}"
        return
    mine = family_of(path.stem)
    crossing = sorted(m for m in imported(path) if m.startswith("app.api.")
                      and m.removeprefix("app.api.") not in SHARED
                      and family_of(m.removeprefix("app.api.")) != mine)
    assert not crossing, f"{path.name} ({mine}) imports another family: {crossing}"


@pytest.mark.parametrize("path", sorted((ROOT / "grammar").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_grammar_package_is_pure(path: Path) -> None:
    bad = sorted(m for m in imported(path)
                 if m.split(".")[0] in {"app", "trio", "quart", "quart_trio", "hypercorn",
                                        "llama_cpp", "httpx"})
    assert not bad, f"{path.name} imports {bad}"
