"""llama.cpp's other routes: tokens, templates, embeddings, infill, slot files.

- ``POST /tokenize`` ``{content, add_special, parse_special, with_pieces}`` and
  ``POST /detokenize`` ``{tokens}``.
- ``POST /apply-template`` ``{messages, tools?, tool_choice?}`` -> ``{"prompt"}``: what a
  chat request would send to the model.
- ``POST /embedding``, ``POST /embeddings``, ``POST /v1/embeddings`` (with
  ``--embedding``; 501 otherwise): mean-pooled, L2-normalised vectors, as floats
  or base64 (little-endian float32).
- ``POST /infill`` (501 when the model has no fill-in-the-middle tokens).
- ``POST /slots/{id}?action=save|restore|erase`` (with ``--slot-save-path``; 501
  otherwise): ``filename`` must be a plain file name inside that directory.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, request

from app.api.chatbody import messages, rendering_from, tools_from
from app.api.common import Family, json_response, query_model, read_json, streamed, with_model
from app.api.native import events
from app.api.report import final_object
from app.bound import Bound
from app.errors import JSON, InvalidRequest, NotFound, NotSupported
from app.prepare import fim_prompt
from app.requests import native_request
from app.validation import parse_json_list, validate

if TYPE_CHECKING:
    from app.runtime import RuntimeLike

extras = Family("extras", __name__)


@extras.route("/tokenize", methods=["POST"])
@with_model("tokenize")
async def tokenize(m: Bound, body: JSON) -> Response:
    with_pieces = bool(body.get("with_pieces"))

    def work(rt: RuntimeLike) -> str:  # the reply's JSON too, in slices (see json_list)
        return '{"tokens": ' + json_list(listed(rt)) + "}"

    def listed(rt: RuntimeLike) -> list[Any]:
        tokens = rt.model.tokenize(body["content"], add_special=bool(body.get("add_special", False)),
                                   parse_special=bool(body.get("parse_special", True)))
        if not with_pieces:
            return list(tokens)
        pieces = []
        for t in tokens:
            raw = rt.model.piece(t) or rt.model.token_text(t).encode()
            try:
                piece: str | list[int] = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)  # a partial UTF-8 sequence: its bytes, as llama.cpp does
            pieces.append({"id": t, "piece": piece})
        return pieces

    return Response(await m.with_model(work), content_type="application/json")


def json_list(items: list[Any], step: int = 8192) -> str:
    """``json.dumps(items)`` written a slice at a time.

    One ``json.dumps`` call holds the GIL until it returns: 700k ids took 98 ms here, and the
    event loop waits that long even though the call runs in a worker. Between slices of 8,192
    the interpreter can switch threads, so no pause is longer than a couple of milliseconds.
    """
    parts = [json.dumps(items[i:i + step], ensure_ascii=False)[1:-1]
             for i in range(0, len(items), step)]
    return "[" + ", ".join(parts) + "]"


@extras.route("/detokenize", methods=["POST"])
@with_model("detokenize")
async def detokenize(m: Bound, body: JSON) -> Response:

    def work(rt: RuntimeLike) -> str:
        for i, t in enumerate(body["tokens"]):
            if not rt.model.valid_token(t):
                raise InvalidRequest(f"invalid value for 'tokens[{i}]': token id {t} is outside "
                                     f"the vocabulary of {rt.model.n_vocab}", param=f"tokens[{i}]")
        return rt.model.detokenize(body["tokens"])

    return json_response({"content": await m.with_model(work)})


@extras.route("/apply-template", methods=["POST"])
@with_model("apply_template", sse_stream=False)
async def apply_template(svc: Bound, body: JSON) -> Response:
    def render() -> str:  # proportional to the messages: in a worker
        policy = tools_from(body)
        return svc.chat.prompt(messages(body), svc.settings.system_prompt,
                               tools=policy.tools if policy.active else (),
                               variables=svc.template_variables(body),
                               rendering=rendering_from(body))

    return json_response({"prompt": await trio.to_thread.run_sync(render)})


# --- embeddings --------------------------------------------------------------------------------
@extras.route("/embedding", methods=["POST"])
@extras.route("/embeddings", methods=["POST"])
@extras.route("/v1/embeddings", methods=["POST"])
@with_model("embedding", sse_stream=False)
async def embeddings(svc: Bound, body: JSON) -> Response:
    if svc.embedder is None:
        raise NotSupported("embeddings are disabled; start the server with --embedding")
    if "dimensions" in body and body["dimensions"] != svc.embedder.n_embd:
        raise InvalidRequest(f"invalid value for 'dimensions': this model embeds in "
                             f"{svc.embedder.n_embd} dimensions", param="dimensions")
    raw = body["input"] if "input" in body else body["content"]
    # one string, one token list, or a list of either
    single = isinstance(raw, str) or all(isinstance(x, int) for x in raw)
    inputs: list[str | list[int]] = [raw] if single else list(raw)

    def to_tokens(rt: RuntimeLike) -> list[list[int]]:
        token_lists: list[list[int]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                token_lists.append(rt.model.tokenize(item, add_special=True, parse_special=False))
            else:
                if not all(rt.model.valid_token(t) for t in item):
                    raise InvalidRequest(f"invalid value for 'input[{i}]': a token id is outside "
                                         "the vocabulary", param=f"input[{i}]")
                token_lists.append(list(item))
        return token_lists

    token_lists = await svc.with_model(to_tokens)
    vectors = await svc.embed(token_lists)
    as_base64 = body.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
             if as_base64 else v} for i, v in enumerate(vectors)]
    n_tokens = sum(len(t) for t in token_lists)
    return json_response({"object": "list", "data": data, "model": svc.model_name,
                          "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})


# --- infill -----------------------------------------------------------------------------------
@extras.route("/infill", methods=["POST"])
@with_model("infill", sse_stream=False)
async def infill(svc: Bound, body: JSON) -> Response:
    if svc.model.fim_tokens() is None:
        raise NotSupported("this model has no fill-in-the-middle tokens")

    native = validate("completion", {k: v for k, v in body.items() if k not in (
        "input_prefix", "input_suffix", "input_extra", "prompt")} | {"prompt": ""})
    request = native_request(native, svc.defaults)
    extra = [(c.get("filename", "tmp"), c["text"]) for c in body.get("input_extra") or ()]

    def tokens(rt: RuntimeLike) -> list[int]:
        return fim_prompt(rt.model, body["input_prefix"], body["input_suffix"], extra,
                          body.get("prompt", ""), n_batch=svc.settings.batch_size,
                          n_predict=request.n_predict, n_ctx=svc.engine.slot_ctx)

    completion = await svc.submit(replace(request, prompt=tuple(await svc.with_model(tokens))))
    if body.get("stream"):
        return streamed(events(svc, [completion], body.get("response_fields")), completion.id)
    return json_response(final_object(await completion.result()))


# --- slot files ---------------------------------------------------------------------------------
@extras.route("/slots/<int:slot_id>", methods=["POST"])
@query_model
async def slot_action(svc: Bound, slot_id: int) -> Response:
    directory = svc.settings.slot_save_path
    if directory is None:
        raise NotSupported("slot actions are disabled; start the server with --slot-save-path")
    action = request.args.get("action", "")
    if action not in ("save", "restore", "erase"):
        raise InvalidRequest("invalid value for 'action': use save, restore or erase",
                             param="action")
    if not 0 <= slot_id < len(svc.slot_infos()):
        raise NotFound(f"no slot with id {slot_id}")
    body = validate("slot_action", await read_json()) if await request.get_data() else {}
    path = ""
    if action != "erase":
        name = body.get("filename")
        if not name:
            raise InvalidRequest("'filename' is required to save or restore", param="filename")
        target = (directory / name).resolve()
        if target.parent != directory.resolve() or ".." in Path(name).parts:
            raise InvalidRequest("invalid value for 'filename': it must name a file inside the "
                                 "slot save directory", param="filename")
        if action == "restore" and not target.is_file():
            raise NotFound(f"no saved slot file named {name!r}")
        path = str(target)
    start = time.perf_counter()
    result = await svc.slot_action(action, slot_id, path)
    ms = (time.perf_counter() - start) * 1000.0
    out: dict[str, object] = {"id_slot": slot_id, **result}
    if action != "erase":
        out["filename"] = body["filename"]
        out["timings"] = {f"{action}_ms": ms}
    return json_response(out)


# --- LoRA adapters ------------------------------------------------------------------------------
@extras.route("/lora-adapters", methods=["GET"])
@query_model
async def lora_adapters(m: Bound) -> Response:
    """llama.cpp's list: ``[{"id", "path", "scale"}]`` with the server-wide scales."""
    adapters = m.runtime.lora
    if adapters is None:
        return json_response([])
    return json_response([{"id": a.id, "path": str(a.path), "scale": s}
                          for a, s in zip(adapters.items, adapters.scales, strict=True)])


@extras.route("/lora-adapters", methods=["POST"])
@query_model
async def set_lora_adapters(m: Bound) -> Response:
    """``[{"id", "scale"}]``: the server-wide scales from now on (adapters not named: 0, as
    llama.cpp); requests already running keep theirs."""
    raw = await request.get_data(cache=False, as_text=False)
    body = parse_json_list(raw if isinstance(raw, bytes) else raw.encode(), "lora_adapters")
    adapters = m.runtime.lora
    n = len(adapters.items) if adapters is not None else 0
    given = {int(e["id"]): float(e["scale"]) for e in body}
    bad = sorted(i for i in given if i >= n)
    if bad:
        raise InvalidRequest(f"invalid value for 'id': no adapter with id {bad[0]} ({n} loaded)",
                             param="id")
    if adapters is not None:
        adapters.scales = tuple(given.get(a.id, 0.0) for a in adapters.items)
    return json_response({"success": True})


# --- reranking ----------------------------------------------------------------------------------
@extras.route("/rerank", methods=["POST"])
@extras.route("/reranking", methods=["POST"])
@extras.route("/v1/rerank", methods=["POST"])
@extras.route("/v1/reranking", methods=["POST"])
@with_model("rerank", sse_stream=False)
async def rerank(m: Bound, body: JSON) -> Response:
    """llama.cpp's reranking: Jina's shape (``documents`` -> ``results`` with
    ``relevance_score``), or TEI's (``texts`` -> a list with ``score``), best first."""
    if m.runtime.reranker is None:
        raise NotSupported("This server does not support reranking. Start it with `--reranking`")
    tei = "texts" in body
    if tei == ("documents" in body):
        raise InvalidRequest("give 'documents' (or TEI's 'texts'), not both or neither",
                             param="documents")
    documents: list[str] = body["texts"] if tei else body["documents"]
    top_n = int(body.get("top_n", len(documents)))
    query = body["query"]

    scored: list[tuple[int, float, int]] = []
    for i, doc in enumerate(documents):  # one pair per worker call: a client that leaves
        score, n = await m.rerank(query, doc, field=f"documents[{i}]")  # ends it between them
        scored.append((i, score, n))
    n_tokens = sum(n for _i, _s, n in scored)
    ranked = sorted(scored, key=lambda r: -r[1])[:top_n]
    if tei:
        with_text = bool(body.get("return_text"))
        return json_response([{"index": i, "score": s, **({"text": documents[i]} if with_text
                                                           else {})} for i, s, _n in ranked])
    with_docs = bool(body.get("return_documents"))
    return json_response({
        "model": body.get("model") or m.model_name, "object": "list",
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        "results": [{"index": i, "relevance_score": s,
                     **({"document": {"text": documents[i]}} if with_docs else {})}
                    for i, s, _n in ranked]})
