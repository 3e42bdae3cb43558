"""llama.cpp's extra routes and CORS, through a real server."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ServerProcess, running_server

SAVE_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "slot-files"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    SAVE_DIR.mkdir(parents=True, exist_ok=True)
    config = tmp_path_factory.mktemp("cfg") / "sluice.json"
    config.write_text(json.dumps({"origins": ["http://allowed.example"], "parallel": 2}))
    with running_server("--config", str(config), "--embedding", "--slot-save-path",
                        str(SAVE_DIR)) as srv:
        yield srv


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def test_tokenize_detokenize_round_trip(http: httpx.Client) -> None:
    text = "Héllo wörld 🦙"
    tokens = http.post("/tokenize", json={"content": text}).json()["tokens"]
    assert all(isinstance(t, int) for t in tokens)
    assert http.post("/detokenize", json={"tokens": tokens}).json()["content"] == text
    with_bos = http.post("/tokenize", json={"content": text, "add_special": True}).json()["tokens"]
    assert with_bos == [2, *tokens]
    pieces = http.post("/tokenize", json={"content": "wörld", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces if isinstance(p["piece"], str)) == "wörld"
    bad = http.post("/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400
    assert "tokens[0]" in bad.json()["error"]["message"]


def test_embeddings_are_normalised_and_meaningful(http: httpx.Client) -> None:
    resp = http.post("/v1/embeddings", json={"input": [
        "The cat sat on the mat.", "A cat was sitting on a rug.", "Quarterly revenue grew 8%."]})
    assert resp.status_code == 200
    body = resp.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-6 for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert body["usage"]["prompt_tokens"] > 0
    b64 = http.post("/v1/embeddings", json={"input": "The cat sat on the mat.",
                                            "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert max(abs(a - b) for a, b in zip(decoded, vectors[0], strict=True)) < 1e-6
    native = http.post("/embedding", json={"content": "The cat sat on the mat."}).json()
    assert native["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-6)


def test_embedding_errors(http: httpx.Client) -> None:
    assert http.post("/v1/embeddings", json={}).status_code == 400
    assert http.post("/v1/embeddings", json={"input": "x", "dimensions": 3}).status_code == 400
    long = http.post("/v1/embeddings", json={"input": "word " * 5000})
    assert long.status_code == 400
    assert "input[0]" in long.json()["error"]["message"]


def test_infill_without_fim_tokens_is_501(http: httpx.Client) -> None:
    resp = http.post("/infill", json={"input_prefix": "def f(", "input_suffix": "):"})
    assert resp.status_code == 501
    assert resp.json()["error"]["type"] == "not_supported_error"


def test_slot_save_erase_restore(http: httpx.Client) -> None:
    prompt = "A prompt worth keeping for later. " * 4
    first = http.post("/completion", json={"prompt": prompt, "n_predict": 1, "id_slot": 1}).json()
    saved = http.post("/slots/1?action=save", json={"filename": "kept.bin"}).json()
    assert saved["n_saved"] >= first["tokens_evaluated"]
    assert saved["filename"] == "kept.bin"
    assert (SAVE_DIR / "kept.bin").is_file()
    assert http.post("/slots/1?action=erase").json()["n_erased"] == saved["n_saved"]
    restored = http.post("/slots/1?action=restore", json={"filename": "kept.bin"}).json()
    assert restored["n_restored"] == saved["n_saved"]
    again = http.post("/completion", json={"prompt": prompt, "n_predict": 1, "id_slot": 1}).json()
    assert again["tokens_cached"] == first["tokens_evaluated"] - 1


def test_a_slot_file_restores_only_into_the_model_that_computed_it(http: httpx.Client) -> None:
    http.post("/completion", json={"prompt": "Some state to keep. " * 4, "n_predict": 1,
                                   "id_slot": 0})
    assert http.post("/slots/0?action=save", json={"filename": "mine.bin"}).status_code == 200
    meta_file = SAVE_DIR / "mine.bin.meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["lora"] == []
    assert len(meta["model"]) == 64
    assert http.post("/slots/0?action=restore", json={"filename": "mine.bin"}).status_code == 200
    meta_file.write_text(json.dumps({**meta, "model": "0" * 64}))  # another model's KV
    foreign = http.post("/slots/0?action=restore", json={"filename": "mine.bin"})
    assert foreign.status_code == 400
    assert "another model" in foreign.json()["error"]["message"]
    meta_file.unlink()  # a file from elsewhere, which says nothing of its model
    unknown = http.post("/slots/0?action=restore", json={"filename": "mine.bin"})
    assert unknown.status_code == 400
    assert "identity" in unknown.json()["error"]["message"]


@pytest.mark.parametrize(("query", "body", "status"), [
    ("action=save", {"filename": "../escape.bin"}, 400),
    ("action=save", {"filename": "/etc/passwd"}, 400),
    ("action=save", {}, 400),
    ("action=restore", {"filename": "missing.bin"}, 404),
    ("action=explode", {"filename": "x.bin"}, 400),
])
def test_slot_action_errors(http: httpx.Client, query: str, body: dict[str, str],
                            status: int) -> None:
    resp = http.post(f"/slots/0?{query}", json=body)
    assert resp.status_code == status, resp.text
    assert not (SAVE_DIR.parent / "escape.bin").exists()


def test_cors_allow_list(http: httpx.Client) -> None:
    pre = http.options("/completion", headers={"Origin": "http://allowed.example",
                                               "Access-Control-Request-Method": "POST"})
    assert pre.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    other = http.options("/completion", headers={"Origin": "http://evil.example",
                                                 "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    simple = http.get("/health", headers={"Origin": "http://allowed.example"})
    assert simple.headers["access-control-allow-origin"] == "http://allowed.example"


def test_metrics_disabled_is_501(http: httpx.Client) -> None:
    resp = http.get("/metrics")
    assert resp.status_code == 501
    assert "--metrics" in resp.json()["error"]["message"]


def test_embeddings_disabled_is_501() -> None:
    with running_server("--parallel", "1") as srv:
        resp = httpx.post(srv.base_url + "/v1/embeddings", json={"input": "x"})
        assert resp.status_code == 501
        slot = httpx.post(srv.base_url + "/slots/0?action=erase")
        assert slot.status_code == 501


def test_embeddings_through_the_openai_package(server: ServerProcess, http: httpx.Client) -> None:
    import openai

    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as c:
        result = c.embeddings.create(model="any", input=["The cat sat on the mat."])
    vector = result.data[0].embedding  # the package asks for base64 and decodes it
    plain = http.post("/v1/embeddings", json={"input": "The cat sat on the mat."}).json()
    assert vector == pytest.approx(plain["data"][0]["embedding"], abs=1e-6)


def test_props_reports_the_chat_template(http: httpx.Client) -> None:
    props = http.get("/props").json()
    assert props["chat_template_name"] == "gemma"
    assert "<start_of_turn>" in props["chat_template"]


def test_pooling_ubatch_and_cors_localhost_flags(http: httpx.Client) -> None:
    text = "The cat sat on the mat."
    mean = http.post("/embedding", json={"content": text}).json()
    with running_server("--parallel", "2", "--embedding", "--pooling", "last", "-b", "64",
                        "-ub", "16", "--cors-origins", "localhost") as srv:
        last = httpx.post(srv.base_url + "/embedding", json={"content": text}).json()
        a, b = mean["data"][0]["embedding"], last["data"][0]["embedding"]
        assert len(a) == len(b)
        assert abs(sum(x * x for x in b) - 1.0) < 1e-3  # normalised
        assert sum(x * y for x, y in zip(a, b, strict=True)) < 0.999  # another pooling
        # a prompt of several micro-batches of 16 decodes
        out = httpx.post(srv.base_url + "/completion", timeout=60, json={
            "prompt": "one two three four five six seven eight nine ten " * 8, "n_predict": 4})
        assert out.json()["tokens_predicted"] == 4
        local = httpx.get(srv.base_url + "/props", headers={"Origin": "http://localhost:5173"})
        assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
        other = httpx.get(srv.base_url + "/props", headers={"Origin": "https://example.com"})
        assert "access-control-allow-origin" not in other.headers


def test_rerank_without_reranking_is_501_as_llama_cpp(http: httpx.Client) -> None:
    for path in ("/rerank", "/v1/rerank", "/reranking", "/v1/reranking"):
        resp = http.post(path, json={"query": "q", "documents": ["a", "b"]})
        assert resp.status_code == 501
        assert resp.json()["error"]["message"] == (
            "This server does not support reranking. Start it with `--reranking`")
    bad = http.post("/rerank", json={"query": "q", "documents": []})
    assert bad.status_code == 400  # the body is checked first: no empty document list
