"""Server defaults reach the families whose wire has no fields for them."""

from __future__ import annotations

from types import SimpleNamespace

from app.api.compat import _request
from app.api.goinfer import infer_request
from app.completion import CompletionRequest, GrammarConstraint, SchemaConstraint
from app.requests import Defaults, sampling_from, with_server_defaults
from app.settings import Settings

DEFAULTS = Defaults(n_keep=7, cache_prompt=False, n_cache_reuse=32,
                    constraint=GrammarConstraint('root ::= "x"', field="--grammar"))


def _check(request: CompletionRequest) -> None:
    assert (request.n_keep, request.cache_prompt, request.n_cache_reuse) == (7, False, 32)
    assert request.constraint == DEFAULTS.constraint


def test_the_helper_keeps_a_requests_own_constraint() -> None:
    own = SchemaConstraint({"type": "integer"})
    got = with_server_defaults(CompletionRequest(prompt=("x",), constraint=own), DEFAULTS)
    assert got.constraint is own
    assert got.n_keep == 7


def test_goinfer_and_the_compat_routes_take_the_server_defaults() -> None:
    settings = Settings()
    bound = SimpleNamespace(settings=settings, defaults=DEFAULTS,
                            service=SimpleNamespace(settings=settings))
    _check(infer_request({"prompt": "x"}, bound))  # type: ignore[arg-type]
    _check(_request({"prompt": "x"}, DEFAULTS))


def test_any_dry_field_marks_dry_as_the_callers() -> None:
    assert not sampling_from({"temperature": 0}, Defaults()).dry_given
    assert sampling_from({"dry_base": 2}, Defaults()).dry_given
    assert sampling_from({"dry_multiplier": 0}, Defaults()).dry_given
