"""The OpenAPI document is built from the same schemas the server validates with."""

from __future__ import annotations

import json

from app.api.openapi import ROUTES, document
from app.validation import SCHEMA_DIR


def test_every_request_schema_is_published_as_validated() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    components = doc["components"]["schemas"]
    for path, method, schema, kind, _summary in ROUTES:
        op = doc["paths"][path][method]
        assert "4XX" in op["responses"]
        if schema is None or kind != "json":
            continue
        on_disk = json.loads((SCHEMA_DIR / f"{schema}.json").read_text())
        published = components[schema]
        assert published.get("properties") == on_disk.get("properties")
        assert published.get("items") == on_disk.get("items")  # an array body
        assert published.get("additionalProperties") == on_disk.get("additionalProperties")
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{schema}"
    json.dumps(doc, allow_nan=False)
