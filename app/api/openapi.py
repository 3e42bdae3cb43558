"""``GET /openapi.json``: an OpenAPI 3.1 document built from ``schemas/*.json``.

The request-body schemas the server validates with are the ones published, so
the document cannot drift from what the server accepts. Every operation
declares the error shape for 4xx and 5xx answers; the test suite fuzzes every
route from this document (``tests/integration/test_fuzz.py``).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from quart import Response

from app.api.common import Family
from app.validation import SCHEMA_DIR

openapi = Family("openapi", __name__)

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "type"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                       "type": {"type": "string"}, "param": {"type": "string"}}}},
}
_OLLAMA_ERROR = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"}}}

#: (path, method, request schema in schemas/ or None, content type or "ollama", summary)
ROUTES: tuple[tuple[str, str, str | None, str, str], ...] = (
    ("/completion", "post", "completion", "json", "llama.cpp completion (streamed with stream)"),
    ("/completions", "post", "completion", "json", "alias of /completion"),
    ("/infill", "post", "infill", "json", "fill in the middle"),
    ("/tokenize", "post", "tokenize", "json", "text to tokens"),
    ("/detokenize", "post", "detokenize", "json", "tokens to text"),
    ("/apply-template", "post", "apply_template", "json", "the prompt a chat would send"),
    ("/embedding", "post", "embedding", "json", "embeddings (with --embedding)"),
    ("/v1/embeddings", "post", "embedding", "json", "OpenAI embeddings"),
    ("/rerank", "post", "rerank", "json", "relevance of documents to a query (--reranking)"),
    ("/v1/rerank", "post", "rerank", "json", "alias of /rerank"),
    ("/grammar", "post", "grammar", "json", "JSON Schema to GBNF"),
    ("/v1/chat/completions", "post", "chat_completion", "json", "OpenAI chat completions"),
    ("/v1/completions", "post", "openai_completion", "json", "OpenAI text completions"),
    ("/v1/chat/completions/input_tokens", "post", "chat_completion", "json",
     "the templated prompt's token count (llama.cpp's)"),
    ("/v1/responses", "post", "responses", "json", "OpenAI Responses (stateless)"),
    ("/v1/responses/input_tokens", "post", "responses", "json",
     "OpenAI Responses: the prompt's token count"),
    ("/v1/messages", "post", "anthropic_messages", "json", "Anthropic Messages"),
    ("/v1/messages/count_tokens", "post", "anthropic_count_tokens", "json",
     "Anthropic: the templated prompt's token count"),
    ("/api/completion", "post", "llama_go", "json", "llama-go completion"),
    ("/stream", "post", "llm_stream", "json", "Rust llm server's plain-text stream"),
    ("/infer", "post", "goinfer_infer", "json", "goinfer inference"),
    ("/model/load", "post", "goinfer_load", "json", "goinfer: load a model by name"),
    ("/predict", "post", "llm_api_predict", "form", "llm-api: complete a prompt"),
    ("/chat", "post", "llm_api_chat", "form", "llm-api: chat"),
    ("/health", "get", None, "", "200 when serving, 503 otherwise"),
    ("/v1/health", "get", None, "", "as /health (llama.cpp's alias)"),
    ("/props", "get", None, "", "server properties"),
    ("/props", "post", None, "", "change server properties: accepted with --props, else 501"),
    ("/lora-adapters", "get", None, "", "the LoRA adapters and their server-wide scales"),
    ("/lora-adapters", "post", "lora_adapters", "json", "set the server-wide LoRA scales"),
    ("/slots", "get", None, "", "slot states"),
    ("/v1/models", "get", None, "", "every known model with its status"),
    ("/models", "get", None, "", "alias of /v1/models (llama.cpp's router)"),
    ("/models/load", "post", "models_load", "json", "load a model now"),
    ("/models/unload", "post", "models_load", "json", "unload a model (ends its requests)"),
    ("/api/tags", "get", None, "ollama", "Ollama: the known models"),
    ("/api/ps", "get", None, "ollama", "Ollama: the loaded models"),
    ("/api/version", "get", None, "ollama", "Ollama: API version"),
    ("/api/show", "post", "ollama_show", "ollama", "Ollama: one model's details"),
    ("/api/generate", "post", "ollama_generate", "ollama", "Ollama: generate (NDJSON stream)"),
    ("/api/chat", "post", "ollama_chat", "ollama", "Ollama: chat (NDJSON stream)"),
    ("/api/v1/generate", "post", "kobold_generate", "json", "KoboldAI: generate"),
    ("/api/extra/generate/stream", "post", "kobold_generate", "json",
     "KoboldCpp: generate, streamed (SSE)"),
    ("/api/extra/abort", "post", "kobold_genkey", "json", "KoboldCpp: abort by genkey"),
    ("/api/extra/generate/check", "post", "kobold_genkey", "json",
     "KoboldCpp: the text so far of a running generation"),
    ("/api/extra/tokencount", "post", "kobold_tokencount", "json", "KoboldCpp: count tokens"),
    ("/api/v1/model", "get", None, "", "KoboldAI: the model's name"),
    ("/api/extra/version", "get", None, "", "KoboldCpp: API level"),
    ("/api/v1/config/max_context_length", "get", None, "", "KoboldAI: a slot's context"),
    ("/model/state", "get", None, "", "goinfer: model state"),
    ("/infer/abort", "post", None, "", "goinfer: abort running /infer requests"),
)

_FORMS: dict[str, dict[str, Any]] = {
    # llm-api's form fields (checked by app/api/compat.py, not by a JSON Schema)
    "llm_api_predict": {"type": "object", "required": ["prompt"], "properties": {
        "prompt": {"type": "string"}, "stopRegex": {"type": "string"},
        "temperature": {"type": "string"}, "max_tokens": {"type": "string"}}},
    "llm_api_chat": {"type": "object", "required": ["messages"], "properties": {
        "messages": {"type": "array", "items": {"type": "string"}},
        "stopRegex": {"type": "string"}, "temperature": {"type": "string"},
        "max_tokens": {"type": "string"}, "template": {"type": "string"},
        "system": {"type": "string"}}},
}


def _schema(name: str) -> dict[str, Any]:
    if name in _FORMS:
        return _FORMS[name]
    raw = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    raw.pop("$schema", None)  # OpenAPI 3.1's default dialect is 2020-12 already
    raw.pop("$id", None)
    return dict(raw)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once)."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Error": _ERROR, "OllamaError": _OLLAMA_ERROR}
    for path, method, schema, kind, summary in ROUTES:
        op: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "success"},
            "4XX": {"description": "a refused request",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "5XX": {"description": "unavailable or failed",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        }}
        if schema is not None:
            components.setdefault(schema, _schema(schema))
            media = "application/x-www-form-urlencoded" if kind == "form" else "application/json"
            op["requestBody"] = {"required": True, "content": {
                media: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}
        if kind == "ollama":  # Ollama's own error shape
            for status in ("4XX", "5XX"):
                op["responses"][status]["content"] = {"application/json": {
                    "schema": {"$ref": "#/components/schemas/OllamaError"}}}
        if kind == "form":  # llm-api answers errors in plain text
            for status in ("4XX", "5XX"):
                op["responses"][status]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0",
            "info": {"title": "Sluice", "version": "0.1.0",
                     "description": "llama.cpp-, OpenAI-, Anthropic-, Ollama-, KoboldAI-, "
                                    "goinfer-, llama-go-, llm- and llm-api-compatible "
                                    "inference server"},
            "paths": paths, "components": {"schemas": components}}


@openapi.route("/openapi.json", methods=["GET"])
async def openapi_json() -> Response:
    return Response(json.dumps(document()), content_type="application/json")
