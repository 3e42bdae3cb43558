"""What the converter's mixins (:mod:`grammar.scalars`, :mod:`grammar.containers`) call on
the converter (:class:`grammar.converter.Converter` implements it)."""

from __future__ import annotations

from typing import Any

JSON = Any


class RuleWriter:
    spec: bool  # the spec-faithful shape: open objects, any order, unbounded strings
    enforced: list[str]

    def add_rule(self, name: str, body: str) -> str:
        raise NotImplementedError

    def primitive(self, name: str) -> str:
        raise NotImplementedError

    def enforce(self, pointer: str, keyword: str) -> None:
        raise NotImplementedError

    def validate_only(self, pointer: str, keyword: str, why: str = "") -> None:
        raise NotImplementedError

    def counts(self, schema: dict[str, JSON], pointer: str, lo_key: str,
               hi_key: str) -> tuple[int, int | None]:
        raise NotImplementedError
