"""How the converter classifies JSON Schema keywords."""

from __future__ import annotations

# Keywords that only annotate: they never constrain an instance.
ANNOTATIONS = frozenset({
    "$schema", "$id", "$anchor", "$dynamicAnchor", "$comment", "$defs", "definitions",
    "$vocabulary", "title", "description", "default", "examples", "readOnly", "writeOnly",
    "deprecated", "contentEncoding", "contentMediaType", "contentSchema",
})
# Keywords checked only by validation after generation.
VALIDATED_ONLY = frozenset({
    "uniqueItems", "multipleOf", "not", "contains",
    "minContains", "maxContains", "propertyNames", "dependentRequired",
    "dependentSchemas", "dependencies", "if", "then", "else", "unevaluatedItems",
    "unevaluatedProperties", "$dynamicRef", "$recursiveRef",
})
TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "boolean": set(),
    "null": set(),
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "contains",
              "minContains", "maxContains", "unevaluatedItems"},
    "object": {"properties", "required", "additionalProperties", "minProperties",
               "maxProperties", "patternProperties", "propertyNames", "dependentRequired",
               "dependentSchemas", "unevaluatedProperties"},
}
ALL_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
STRUCTURAL = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}
# Every keyword that constrains an instance (the rest annotate or are unknown to JSON Schema).
CONSTRAINING = frozenset(STRUCTURAL | VALIDATED_ONLY | {k for kws in TYPE_KEYWORDS.values()
                                                         for k in kws}
                         | {"additionalItems", "items", "$dynamicRef", "$recursiveRef"})
