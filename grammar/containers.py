"""Arrays and objects for the converter: bounded item lists, ordered members, extra keys.

A mixin of :class:`grammar.converter.Converter`; the abstract methods below are
the converter's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grammar.errors import UnsupportedSchemaError, escape_pointer
from grammar.gbnf_text import repeat
from grammar.keys import key_excluding, key_literal
from grammar.linear_regex import UnsupportedPattern, search
from grammar.rulebase import RuleWriter

#: Objects with at most this many properties take them in any order (2**n states of which
#: properties were written); larger ones in declared order. Measured in bench/grammar.py.
ANY_ORDER_MAX = 5
#: Objects in declared order with at most this many properties and no extras have
#: ``minProperties``/``maxProperties`` in the grammar (a state per position and count).
COUNTED_MAX = 32

JSON = Any


class ContainerRules(RuleWriter):
    prop_order: Sequence[str]
    rules: dict[str, str]
    strict: bool
    key_tries: dict[tuple[str, ...], str]
    compact: bool  # the full grammar is over the size limit: declared order, closed objects

    def visit(self, schema: JSON, pointer: str, name: str) -> str:
        raise NotImplementedError

    def pattern_key(self, pattern: str, pointer: str, name: str) -> str:
        raise NotImplementedError

    def reserve(self, name: str) -> str:
        raise NotImplementedError

    def visit_array(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        space = self.primitive("space")
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", True)
        if isinstance(items, list):  # draft-04 to 2019-09: a tuple, then additionalItems
            prefix, items = items, schema.get("additionalItems", True)
        lo, hi = self.counts(schema, pointer, "minItems", "maxItems")
        if "maxItems" in schema and hi is None:  # over MAX_COUNT: left to validation
            schema = {k: v for k, v in schema.items() if k != "maxItems"}
        for key in ("prefixItems", "items", "additionalItems", "minItems", "maxItems"):
            if key in schema:
                self.enforce(pointer, key)
        where = "prefixItems" if "prefixItems" in schema else "items"
        elems = [self.visit(s, f"{pointer}/{where}/{i}", f"{name}-{i}")
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
        """Members: declared properties (each at most once, required ones always), members
        whose names match ``patternProperties``, and extra members as ``additionalProperties``
        says. Absent, an object that declares properties is closed (the generation default,
        strict mode, or a grammar over the size limit); in the spec-faithful shape it takes
        extra members of any value, as JSON Schema says. Properties come in declared order,
        optional ones skippable; in the spec-faithful shape small objects take them in any
        order (see :data:`ANY_ORDER_MAX`). Extras may come anywhere."""
        space = self.primitive("space")
        props: dict[str, JSON] = schema.get("properties", {})
        patterns: dict[str, JSON] = schema.get("patternProperties", {})
        required = list(dict.fromkeys(schema.get("required", [])))
        forbidden = {k for k, v in props.items() if v is False}
        if forbidden & set(required):
            raise UnsupportedSchemaError(
                f"property {sorted(forbidden & set(required))[0]!r} is both required and forbidden",
                pointer=pointer)
        props = {k: v for k, v in props.items() if v is not False}
        additional = schema.get("additionalProperties")
        for key in ("properties", "required", "additionalProperties", "patternProperties"):
            if key in schema:
                self.enforce(pointer, key)
        declares = "properties" in schema or bool(patterns)
        if additional is None:
            if (self.strict or self.compact or not self.spec) and declares:
                additional = False
                why = ("strict" if self.strict else "the generation default" if not self.spec
                       else "the open grammar is over the size limit")
                self.enforced.append(f"{pointer}/additionalProperties (absent: closed, {why})")
            elif patterns:
                # keys matching no pattern would take any value; the grammar keeps to the
                # patterns' keys (a subset of the schema)
                additional = False
                self.enforced.append(f"{pointer}/additionalProperties (absent: only names "
                                     "matching patternProperties)")
            else:
                additional = True
                if props:
                    self.enforced.append(f"{pointer}/additionalProperties (absent: open)")
        for key in required:
            if key in props:
                continue
            matching = [v for pat, v in patterns.items() if self._may_match(pat, key)]
            if matching:
                props = {**props, key: matching[0] if len(matching) == 1 else {"allOf": matching}}
            elif additional is False:
                raise UnsupportedSchemaError(
                    f"required property {key!r} is not allowed by the schema", pointer=pointer)
            else:
                props = {**props, key: additional}
        if any(self._may_match(pat, key) for pat in patterns for key in props):
            self.validate_only(pointer, "patternProperties",
                               " for declared names that match a pattern (the grammar gives "
                               "them their declared schema)")
        order = [k for k in self.prop_order if k in props] + [k for k in props
                                                                if k not in self.prop_order]
        kvs: list[tuple[str, str, bool]] = []
        for key in order:
            value = self.visit(props[key], f"{pointer}/properties/{escape_pointer(key)}",
                               f"{name}-{key}")
            kv = self.add_rule(f"{name}-{key}-kv",
                               f'{key_literal(key)} {space} ":" {space} {value}')
            kvs.append((key, kv, key in required))
        extras: list[str] = []
        for i, (pat, sub) in enumerate(patterns.items()):
            where = f"{pointer}/patternProperties/{escape_pointer(pat)}"
            key_text = self.pattern_key(pat, where, f"{name}-pattern-{i}")
            value = self.visit(sub, where, f"{name}-pattern-{i}-value")
            extras.append(f'"\\"" {key_text} "\\"" {space} ":" {space} {value}')
        if len(patterns) > 1:
            self.validate_only(pointer, "patternProperties",
                               " where a name matches several patterns")
        if additional is not False:
            value = self.visit(additional, f"{pointer}/additionalProperties", f"{name}-additional")
            key_rule = self._key_excluding(list(props), name)
            extras.append(f'{key_rule} ":" {space} {value}')
            if patterns:
                self.validate_only(pointer, "patternProperties",
                                   " for extra names (the grammar gives them additionalProperties)")
        extra = self.add_rule(f"{name}-extra", " | ".join(extras)) if extras else None
        lo, hi = self.counts(schema, pointer, "minProperties", "maxProperties")
        if "maxProperties" in schema and hi is None:  # over MAX_COUNT: left to validation
            schema = {k: v for k, v in schema.items() if k != "maxProperties"}
        body = self._members(kvs, extra, lo, hi, schema, pointer, name)
        if "|" in body:
            body = f"( {body} )"
        return self.add_rule(name, f'"{{" {space} {body} "}}" {space}'.replace("  ", " "))

    def _may_match(self, pattern: str, key: str) -> bool:
        try:
            return search(pattern, key) is not None
        except UnsupportedPattern:
            return True  # cannot tell: treat as matching (both schemas then apply)

    def _members(self, kvs: list[tuple[str, str, bool]], extra: str | None, lo: int,
                 hi: int | None, schema: dict[str, JSON], pointer: str, name: str) -> str:
        n_req = sum(1 for kv in kvs if kv[2])
        if hi is not None and (hi < n_req or lo > hi):
            raise UnsupportedSchemaError("no object satisfies minProperties, maxProperties and "
                                         "required together", pointer=pointer)
        counted = lo > n_req or (hi is not None and (extra is not None or hi < len(kvs)))
        sep = f'"," {self.primitive("space")}'
        if not kvs and extra is not None:
            for key in ("minProperties", "maxProperties"):
                if key in schema:
                    self.enforce(pointer, key)
            if hi == 0:
                return ""
            more = repeat(self.add_rule(f"{name}-more", f"{sep} {extra}"), max(lo - 1, 0),
                          None if hi is None else hi - 1, self.add_rule)
            body = self._join(extra, more)
            return body if lo >= 1 else f"( {body} )?"
        any_order = (self.spec and len(kvs) <= ANY_ORDER_MAX and not self.prop_order
                     and not self.compact)
        if counted and extra is None and not any_order and len(kvs) <= COUNTED_MAX:
            for key in ("minProperties", "maxProperties"):
                if key in schema:
                    self.enforce(pointer, key)
            return self._declared_counted(kvs, lo, hi, sep, name, pointer)
        if counted and not (any_order and extra is None):
            for key in ("minProperties", "maxProperties"):
                if key in schema:
                    self.validate_only(pointer, key, " together with other members")
            lo, hi = 0, None
        else:
            for key in ("minProperties", "maxProperties"):
                if key in schema:
                    self.enforce(pointer, key)
        if any_order:
            return self._any_order(kvs, extra, lo, hi, sep, name)
        return self._declared_order(kvs, extra, sep, name)

    def _any_order(self, kvs: list[tuple[str, str, bool]], extra: str | None, lo: int,
                   hi: int | None, sep: str, name: str) -> str:
        """Each subset of written properties is a state: ``state(S)`` follows a member and
        offers any number of extra members, then every property not in S, or the end once
        every required property is in S (and the count is within ``lo``..``hi``)."""
        n = len(kvs)
        need = sum(1 << i for i, kv in enumerate(kvs) if kv[2])
        xs = self.add_rule(f"{name}-xs", f"( {sep} {extra} )*") if extra is not None else ""
        memo: dict[int, str | None] = {}

        def done(mask: int) -> bool:
            return mask & need == need and bin(mask).count("1") >= lo

        def room(mask: int) -> bool:
            return hi is None or bin(mask).count("1") < hi

        def state(mask: int) -> str | None:
            """What may follow a member with ``mask`` written ("": nothing; None: no way to
            finish). States only point to larger ones, so each is declared once, finished."""
            if mask in memo:
                return memo[mask]
            options = []
            if room(mask):
                for i in range(n):
                    if not mask >> i & 1:
                        nxt = state(mask | 1 << i)
                        if nxt is not None:
                            options.append(f"{sep} {kvs[i][1]} {nxt}".rstrip())
            core: str | None = " | ".join(options)
            if done(mask):
                core = f"( {core} )?" if core else ""
            elif not options:
                core = None
            elif xs and len(options) > 1:
                core = f"( {core} )"
            if core is None:
                memo[mask] = None
            else:
                text = self._join(xs, core)
                memo[mask] = text if " " not in text else self.add_rule(f"{name}-s{mask}", text)
            return memo[mask]

        moves = []
        for i in range(n):
            nxt = state(1 << i) if room(0) else None
            if nxt is not None:
                moves.append(f"{kvs[i][1]} {nxt}".rstrip())
        if extra is not None:
            nxt = state(0)
            if nxt is not None:
                moves.append(f"{extra} {nxt}".rstrip())
        body = " | ".join(moves)
        if done(0):
            body = f"( {body} )?" if body else ""
        return body

    def _declared_counted(self, kvs: list[tuple[str, str, bool]], lo: int, hi: int | None,
                          sep: str, name: str, pointer: str) -> str:
        """Declared order with the number of members between ``lo`` and ``hi`` (no extras):
        ``rest(i, k)`` follows ``k`` written members with properties i.. still to come; each
        choice starts with a different key, so the grammar stays unambiguous."""
        n = len(kvs)
        memo: dict[tuple[int, int], str | None] = {}

        def rest(i: int, k: int) -> str | None:
            """What may follow (None: no way to finish; "": only the end)."""
            if (i, k) in memo:
                return memo[(i, k)]
            options: list[str] = []
            can_end = lo <= k
            for j in range(i, n):
                if hi is None or k < hi:
                    nxt = rest(j + 1, k + 1)
                    if nxt is not None:
                        lead = f"{sep} {kvs[j][1]}" if k else kvs[j][1]
                        options.append(f"{lead} {nxt}".rstrip())
                if kvs[j][2]:  # a required property cannot be skipped
                    can_end = False
                    break
            body: str | None = " | ".join(options)
            if can_end:
                body = f"( {body} )?" if body else ""
            elif not options:
                body = None
            memo[(i, k)] = body if not body or " " not in body else \
                self.add_rule(f"{name}-c{i}-{k}", body)
            return memo[(i, k)]

        body = rest(0, 0)
        if body is None:
            raise UnsupportedSchemaError("no object satisfies minProperties, maxProperties and "
                                         "required together", pointer=pointer)
        return body

    def _declared_order(self, kvs: list[tuple[str, str, bool]], extra: str | None, sep: str,
                        name: str) -> str:
        """Properties in declared order (optional ones may be skipped), extras anywhere.

        ``after(i)`` follows a written member when properties i.. are still to come: any
        number of extra members, then the next property written (``skip(i)``), or the end
        when all the rest are optional. Every choice starts with a different key, so the
        grammar is unambiguous.
        """
        n = len(kvs)
        optional_from = [True] * (n + 1)
        for i in range(n - 1, -1, -1):
            optional_from[i] = optional_from[i + 1] and not kvs[i][2]
        xs = self.add_rule(f"{name}-xs", f"( {sep} {extra} )*") if extra is not None else ""
        skip: list[str] = [""] * (n + 1)
        after: list[str] = [""] * (n + 1)
        for i in range(n, -1, -1):
            if i < n:
                options = [f"{sep} {kvs[i][1]} {after[i + 1]}".rstrip()]
                if not kvs[i][2] and skip[i + 1]:
                    options.append(skip[i + 1])
                skip[i] = self.add_rule(f"{name}-skip-{i}", " | ".join(options))
            rest = (f"{skip[i]}?" if optional_from[i] else skip[i]) if skip[i] else ""
            after[i] = self._join(xs, rest)
        first: list[str] = [""] * (n + 1)
        for i in range(n - 1, -1, -1):
            options = [f"{kvs[i][1]} {after[i + 1]}".rstrip()]
            if not kvs[i][2] and first[i + 1]:
                options.append(first[i + 1])
            first[i] = " | ".join(options) if i == n - 1 or kvs[i][2] else \
                self.add_rule(f"{name}-first-{i}", " | ".join(options))
        options = [first[0]] if first[0] else []
        if extra is not None:
            options.append(f"{extra} {after[0]}".rstrip())
        body = " | ".join(options)
        if optional_from[0] and body:
            body = f"( {body} )?"
        return body

    @staticmethod
    def _join(a: str, b: str) -> str:
        return f"{a} {b}" if a and b else (a or b)

    def _key_excluding(self, keys: list[str], name: str) -> str:
        return key_excluding(keys, name, primitive=self.primitive, add_rule=self.add_rule,
                             tries=self.key_tries)
