"""Arrays and objects for the converter: bounded item lists, ordered members, extra keys.

A mixin of :class:`grammar.convert._Converter`; the abstract methods below are
the converter's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grammar.errors import UnsupportedSchemaError, escape_pointer
from grammar.gbnf_text import char_class, literal, repeat

JSON = Any


class ContainerRules:
    prop_order: Sequence[str]
    rules: dict[str, str]

    def add_rule(self, name: str, body: str) -> str:
        raise NotImplementedError

    def primitive(self, name: str) -> str:
        raise NotImplementedError

    def enforce(self, pointer: str, keyword: str) -> None:
        raise NotImplementedError

    def visit(self, schema: JSON, pointer: str, name: str) -> str:
        raise NotImplementedError

    def visit_array(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        space = self.primitive("space")
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", True)
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        hi = None if hi is None else int(hi)
        for key in ("prefixItems", "items", "minItems", "maxItems"):
            if key in schema:
                self.enforce(pointer, key)
        elems = [self.visit(s, f"{pointer}/prefixItems/{i}", f"{name}-{i}")
                 for i, s in enumerate(prefix)]
        if items is False:
            hi = min(hi, len(elems)) if hi is not None else len(elems)
            item = None
        else:
            item = self.visit(items, f"{pointer}/items", f"{name}-item")
        if hi is not None and lo > hi:
            raise UnsupportedSchemaError(f"minItems {lo} exceeds maxItems {hi}", pointer=pointer)
        # Prefix elements come first (each required while below minItems), then items.
        sep = f'"," {space}'
        n_prefix = len(elems) if hi is None else min(len(elems), hi)
        if n_prefix == 0:
            inner = self._array_items(item, lo, hi, sep, name) if item is not None else ""
        else:
            rest = self._array_tail(item, lo - n_prefix, None if hi is None else hi - n_prefix, sep)
            for i in range(n_prefix - 1, -1, -1):
                body = self._join(elems[i] if i == 0 else f"{sep} {elems[i]}", rest)
                if i >= lo:
                    body = f"( {body} )?"
                rest = self.add_rule(f"{name}-from-{i}", body) if i > 0 else body
            inner = rest
        return self.add_rule(name, self._join(f'"[" {space}', self._join(inner, f'"]" {space}')))

    def _array_tail(self, item: str | None, lo: int, hi: int | None, sep: str) -> str:
        """Items after the prefix: each preceded by a separator."""
        if item is None or (hi is not None and hi <= 0):
            return ""
        lo = max(lo, 0)
        return repeat(self.add_rule(f"{item}-next", f"{sep} {item}"), lo, hi, self.add_rule)

    def _array_items(self, item: str, lo: int, hi: int | None, sep: str, name: str) -> str:
        if hi == 0:
            return ""
        more = repeat(self.add_rule(f"{name}-next", f"{sep} {item}"),
                      max(lo - 1, 0), None if hi is None else hi - 1, self.add_rule)
        body = f"{item} {more}".strip()
        return body if lo >= 1 else f"( {body} )?"

    # --- objects ---------------------------------------------------------------
    def visit_object(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        space = self.primitive("space")
        props: dict[str, JSON] = schema.get("properties", {})
        required = set(schema.get("required", []))
        forbidden = {k for k, v in props.items() if v is False}
        if forbidden & required:
            raise UnsupportedSchemaError(
                f"property {sorted(forbidden & required)[0]!r} is both required and forbidden",
                pointer=pointer)
        props = {k: v for k, v in props.items() if v is not False}
        additional = schema.get("additionalProperties")
        if "properties" not in schema and additional is None:
            additional = True  # a bare object schema allows any keys
        for key in ("properties", "required", "additionalProperties"):
            if key in schema:
                self.enforce(pointer, key)
        for key in sorted(required - props.keys()):
            if additional is False:
                raise UnsupportedSchemaError(
                    f"required property {key!r} is not allowed by the schema", pointer=pointer)
            props = {**props, key: additional if isinstance(additional, dict) else True}
        order = [k for k in self.prop_order if k in props] + [k for k in props
                                                                if k not in self.prop_order]
        kvs: list[tuple[str, str, bool]] = []
        for key in order:
            value = self.visit(props[key], f"{pointer}/properties/{escape_pointer(key)}",
                               f"{name}-{key}")
            kv = self.add_rule(f"{name}-{key}-kv",
                               f'{literal(json.dumps(key, ensure_ascii=False))} {space} ":" {space} {value}')
            kvs.append((key, kv, key in required))
        extra: str | None = None
        if additional not in (None, False):
            value = self.visit(additional, f"{pointer}/additionalProperties", f"{name}-additional")
            key_rule = self._key_excluding(list(props), name)
            extra = self.add_rule(f"{name}-additional-kv", f'{key_rule} ":" {space} {value}')
        body = self._object_body(kvs, extra, f'"," {space}', name)
        return self.add_rule(name, f'"{{" {space} {body} "}}" {space}'.replace("  ", " "))

    def _object_body(self, kvs: list[tuple[str, str, bool]], extra: str | None, sep: str,
                     name: str) -> str:
        """Members in declared order, required ones always, optional ones at most once, then extras.

        ``tail(i)`` follows a written member and covers members i.. (each with its
        separator in front); ``head(i)`` is where nothing was written yet.
        """
        n = len(kvs)
        tail = [""] * (n + 1)
        tail[n] = f"( {sep} {extra} )*" if extra else ""
        for i in range(n - 1, -1, -1):
            _key, kv, req = kvs[i]
            item = f"{sep} {kv}" if req else f"( {sep} {kv} )?"
            tail[i] = self._join(item, tail[i + 1])
            if i > 0 and tail[i]:
                tail[i] = self.add_rule(f"{name}-tail-{i}", tail[i])
        head = f"( {extra} {tail[n]} )?" if extra else ""
        first_required = next((i for i, kv in enumerate(kvs) if kv[2]), n - 1)
        for i in range(first_required, -1, -1):
            _key, kv, req = kvs[i]
            first = self._join(kv, tail[i + 1])
            if req:
                head = first
            else:
                head = f"( {first} )?" if not head else f"{first} | {head}"
                if head.count("|") and i > 0:
                    head = self.add_rule(f"{name}-head-{i}", head)
                elif "|" in head:
                    head = f"( {head} )"
        return head

    @staticmethod
    def _join(a: str, b: str) -> str:
        return f"{a} {b}" if a and b else (a or b)

    def _key_excluding(self, keys: list[str], name: str) -> str:
        """A JSON string that is none of ``keys`` (written without escapes)."""
        string = self.primitive("string")
        if not keys:
            return string
        space = self.primitive("space")
        plain = '[^"\\\\\\x00-\\x1F]'
        trie: dict[str, Any] = {}
        for key in keys:
            node = trie
            for ch in key:
                node = node.setdefault(ch, {})
            node[""] = {}

        def build(node: dict[str, Any], depth: int) -> str:
            chars = sorted(c for c in node if c)
            options = []
            if chars:
                others = char_class(_ranges_excluding(chars), negated=False)
                options.append(f"{others} {plain}*")
                for c in chars:
                    options.append(f"{literal(c)} {build(node[c], depth + 1)}")
            else:
                options.append(f"{plain}+")
            if "" not in node:
                options.append('""')
            return self.add_rule(f"{name}-key-{depth}-{len(self.rules)}", " | ".join(options))

        return f'"\\"" {build(trie, 0)} "\\"" {space}'


def _ranges_excluding(chars: list[str]) -> list[tuple[int, int]]:
    """Code point ranges of plain JSON string characters other than ``chars``."""
    banned = sorted({ord(c) for c in chars} | {0x22, 0x5C} | set(range(0x20)))
    out, nxt = [], 0
    for b in banned:
        if b > nxt:
            out.append((nxt, b - 1))
        nxt = max(nxt, b + 1)
    out.append((nxt, 0x10FFFF))
    return out
