"""Schema-constrained extraction with the real default model, and POST /grammar."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from grammar import validate
from tests.integration.helpers import TIMEOUT, stream_events
from tests.serverproc import ServerProcess, running_server

TEXT = ("Invoice INV-20931 was issued on 2024-03-15 by Acme Tools GmbH, Berlin, to Jane Doe "
        "(jane.doe@example.com, age 42). Items: 2 hammers at 12.50 EUR each, 1 saw at 30 EUR. "
        "The meeting about it starts 2024-03-20T10:00:00Z, reference "
        "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b.")

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "format": "email"}},
        "required": ["name", "age", "email"], "additionalProperties": False},
    "invoice": {"type": "object", "properties": {
        "number": {"type": "string", "pattern": "^INV-[0-9]{3,6}$"},
        "date": {"type": "string", "format": "date"},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {
                "item": {"type": "string", "maxLength": 20},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                "unit_price": {"type": "number"}},
            "required": ["item", "quantity", "unit_price"], "additionalProperties": False}}},
        "required": ["number", "date", "currency", "lines"], "additionalProperties": False},
    "meeting": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "start": {"type": "string", "format": "date-time"},
        "company": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 30},
            "city": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]}},
            "required": ["name", "city"], "additionalProperties": False}},
        "required": ["id", "start", "company"], "additionalProperties": False},
    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{2,10}$"},
             "minItems": 2, "maxItems": 4},
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--parallel", "4") as srv:
        yield srv


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


def prompt(name: str) -> str:
    return f"Text: {TEXT}\nExtract the {name} from the text as JSON.\nJSON:"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("seed", [1, 2])
async def test_extraction_is_valid_every_time(client: httpx.AsyncClient, name: str,
                                              seed: int) -> None:
    schema = SCHEMAS[name]
    resp = await client.post("/completion", json={
        "prompt": prompt(name), "json_schema": schema, "n_predict": 400, "seed": seed,
        "temperature": 0.7})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["stop_type"] == "eos", out["content"]
    assert out["schema_valid"] is True, (out["content"], out["schema_errors"])
    assert out["schema_errors"] == []
    assert validate(out["content"], schema).valid
    json.loads(out["content"])


async def test_streamed_extraction_reports_validation_in_final_event(
        client: httpx.AsyncClient) -> None:
    events = await stream_events(client, "/completion", {
        "prompt": prompt("person"), "json_schema": SCHEMAS["person"], "n_predict": 300,
        "temperature": 0})
    final = events[-1]
    assert final["stop"] is True
    assert final["schema_valid"] is True
    json.loads("".join(e["content"] for e in events[:-1]))  # the partials hold the JSON
    assert final["content"] == ""


async def test_truncated_output_is_reported_invalid_not_hidden(client: httpx.AsyncClient) -> None:
    out = (await client.post("/completion", json={
        "prompt": prompt("invoice"), "json_schema": SCHEMAS["invoice"], "n_predict": 5,
        "temperature": 0})).json()
    assert out["stop_type"] == "limit"
    assert out["schema_valid"] is False
    assert "not valid JSON" in out["schema_errors"][0]["message"]


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": 123}, "at /type"),
        ({"type": "hiccup"}, "at /type"),
        ({"type": "string", "pattern": "(?=a)"}, "look-around"),
        ({"$ref": "http://example.com/x.json"}, "remote $ref"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_schema_is_400_before_any_token(client: httpx.AsyncClient, schema: Any,
                                                  needle: str, stream: bool) -> None:
    resp = await client.post("/completion", json={"prompt": "x", "json_schema": schema,
                                                  "stream": stream})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == "json_schema"
    assert needle in err["message"]


async def test_grammar_and_schema_together_is_400(client: httpx.AsyncClient) -> None:
    resp = await client.post("/completion", json={"prompt": "x", "json_schema": {},
                                                  "grammar": 'root ::= "a"'})
    assert resp.status_code == 400


async def test_grammar_route_converts_and_reports(client: httpx.AsyncClient) -> None:
    schema = {"type": "array", "items": {"type": "integer", "minimum": 1}, "uniqueItems": True}
    resp = await client.post("/grammar", json={"schema": schema})
    assert resp.status_code == 200
    body = resp.json()
    assert body["gbnf"].startswith("root ::= ")
    assert "/items/minimum" in body["enforced"]
    assert body["validated_only"] == ["/uniqueItems"]
    strict = await client.post("/grammar", json={"schema": schema, "grammar_only": True})
    assert strict.status_code == 400
    assert strict.json()["error"]["pointer"] == "/uniqueItems"
    bad = await client.post("/grammar", json={"schema": {"type": "hiccup"}})
    assert bad.status_code == 400
    assert bad.json()["error"]["pointer"] == "/type"
    missing = await client.post("/grammar", json={})
    assert missing.status_code == 400
