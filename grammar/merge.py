"""``allOf``: the conjunction of schemas written as one schema, where that is exact.

Raises :class:`~grammar.errors.UnsupportedSchemaError` where it is not.
"""

from __future__ import annotations

from typing import Any

from grammar.errors import UnsupportedSchemaError
from grammar.keywords import CONSTRAINING
from grammar.linear_regex import UnsupportedPattern, search

JSON = Any


#: The most branches two ``anyOf``/``oneOf`` of ``allOf`` branches multiply into.
MAX_BRANCH_PRODUCT = 64


def _close_over(mine: dict[str, JSON], other: dict[str, JSON], pointer: str) -> dict[str, JSON]:
    """Apply ``mine``'s additionalProperties to the properties only ``other`` declares.

    In JSON Schema, additionalProperties only knows its own schema's
    ``properties``: merged with another branch, it forbids (or constrains) the
    other branch's extra properties.
    """
    extra_rule = mine.get("additionalProperties", True)
    if extra_rule is True:
        return mine
    own = set(mine.get("properties", {}))
    patterns = list(mine.get("patternProperties", {}))
    foreign = [p for p in other.get("properties", {}) if p not in own]
    foreign += [p for p in other.get("required", []) if p not in own and p not in foreign]
    # names matching this branch's patternProperties are its own, not additional
    foreign = [p for p in foreign if not any(_may_match(pat, p) for pat in patterns)]
    if not foreign:
        return mine
    if extra_rule is False:
        required = set(mine.get("required", [])) | set(other.get("required", []))
        for prop in foreign:
            if prop in required:
                raise UnsupportedSchemaError(
                    f"allOf: property {prop!r} is required but forbidden by additionalProperties "
                    "of another branch; no object satisfies the schema", pointer=pointer)
        # the property may not appear at all
        props = dict(mine.get("properties", {}))
        props.update({p: False for p in foreign})
        return {**mine, "properties": props}
    props = dict(mine.get("properties", {}))
    props.update({p: extra_rule for p in foreign})
    return {**mine, "properties": props}


def _may_match(pattern: str, name: str) -> bool:
    try:
        return search(pattern, name) is not None
    except UnsupportedPattern:
        return True  # cannot tell: not treated as additional


def constraining(schema: dict[str, JSON]) -> bool:
    return any(k in CONSTRAINING for k in schema)


def merge(a: dict[str, JSON], b: JSON, pointer: str) -> dict[str, JSON]:
    """The conjunction of two schemas as one schema, where that can be written exactly."""
    if b is True:
        return dict(a)
    if not isinstance(b, dict):
        raise UnsupportedSchemaError("allOf with a 'false' schema admits no value", pointer=pointer)
    a = _close_over(a, b, pointer)
    b = _close_over(b, a, pointer)
    out = dict(a)
    for key, value in b.items():
        if key not in out or out[key] == value or key not in CONSTRAINING:
            # annotations (title, description, examples, x-... extensions, unknown keywords)
            # constrain nothing, so two branches cannot conflict on them: the first is kept
            out.setdefault(key, value)
            continue
        mine = out[key]
        if key == "properties":
            props = dict(mine)
            for name, sub in value.items():
                if name not in props:
                    props[name] = sub
                elif props[name] is False or sub is False:
                    props[name] = False
                else:
                    props[name] = {"allOf": [props[name], sub]}
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*mine, *value]))
        elif key == "type":
            ta = {mine} if isinstance(mine, str) else set(mine)
            tb = {value} if isinstance(value, str) else set(value)
            if "number" in ta and "integer" in tb:
                ta.add("integer")
            if "number" in tb and "integer" in ta:
                tb.add("integer")
            both = sorted(ta & tb)
            if not both:
                raise UnsupportedSchemaError("allOf branches share no type", pointer=pointer)
            out[key] = both[0] if len(both) == 1 else both
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
            out[key] = max(mine, value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems"):
            out[key] = min(mine, value)
        elif key == "enum":
            out[key] = [v for v in mine if v in value]
        elif key in ("items", "additionalProperties") and isinstance(mine, dict | bool):
            out[key] = {"allOf": [mine, value]}
        elif key in ("anyOf", "oneOf") and len(mine) * len(value) <= MAX_BRANCH_PRODUCT:
            # (a | b) and (c | d) is (a and c) | (a and d) | (b and c) | (b and d)
            out[key] = [{"allOf": [x, y]} for x in mine for y in value]
        else:
            raise UnsupportedSchemaError(f"allOf: cannot combine two different '{key}' values",
                                         pointer=pointer)
    return out
