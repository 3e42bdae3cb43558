"""llama.cpp's server flags on a real server: default sampling (``--temp``, ``--top-k``, ...)
and ``-fa`` (flash attention: with it, a cached prompt gives the same logits as an uncached
one)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from grammar import accepts
from tests.serverproc import running_server

TIMEOUT = httpx.Timeout(60.0)
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
               "<|im_start|>assistant\n")


def test_default_sampling_flags_apply_when_a_request_has_none() -> None:
    with running_server("--parallel", "1", "--temp", "0", "--top-k", "7", "--repeat-penalty",
                        "1.3", "--samplers", "penalties;top_k;temperature") as srv:
        props = httpx.get(srv.base_url + "/props", timeout=TIMEOUT).json()
        settings = props["default_generation_settings"]
        assert (settings["temperature"], settings["top_k"], settings["repeat_penalty"]) == (
            0.0, 7, 1.3)
        assert settings["samplers"] == ["penalties", "top_k", "temperature"]
        body = {"prompt": "The sky is", "n_predict": 8, "cache_prompt": False}
        one = httpx.post(srv.base_url + "/completion", json=body, timeout=TIMEOUT).json()
        two = httpx.post(srv.base_url + "/completion", json=body, timeout=TIMEOUT).json()
        assert one["generation_settings"]["temperature"] == 0.0  # the server's default
        assert one["generation_settings"]["top_k"] == 7
        assert one["content"] == two["content"]  # greedy by default now
        own = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT,
                         json={**body, "temperature": 0.9, "top_k": 40}).json()
        assert own["generation_settings"]["temperature"] == 0.9  # the request's own win
        assert own["generation_settings"]["top_k"] == 40


def _first_token(base: str, cache_prompt: bool) -> list[tuple[str, float]]:
    out: Any = httpx.post(base + "/completion", timeout=TIMEOUT, json={
        "prompt": CHAT_PROMPT, "n_predict": 1, "temperature": 0, "n_probs": 3,
        "cache_prompt": cache_prompt}).json()
    return [(t["token"], round(t["logprob"], 4))
            for t in out["completion_probabilities"][0]["top_logprobs"]]


def test_flash_attention_makes_a_cached_prompt_give_the_same_logits() -> None:
    with running_server("--model", "smollm2-135m-instruct", "--parallel", "1", "-fa", "on",
                        "--ctx-size", "2048") as srv:
        uncached = _first_token(srv.base_url, False)
        _first_token(srv.base_url, True)  # fills the cache
        cached = _first_token(srv.base_url, True)
        assert cached == uncached


def test_no_slots_and_no_webui() -> None:
    with running_server("--parallel", "1", "--no-slots", "--no-webui", "--offline") as srv:
        slots = httpx.get(srv.base_url + "/slots", timeout=TIMEOUT)
        assert slots.status_code == 501
        assert "--slots" in slots.json()["error"]["message"]
        assert httpx.get(srv.base_url + "/", timeout=TIMEOUT).status_code == 404
        assert httpx.get(srv.base_url + "/web/app.js", timeout=TIMEOUT).status_code == 404
        assert httpx.get(srv.base_url + "/health", timeout=TIMEOUT).status_code == 200
        props = httpx.post(srv.base_url + "/props", json={}, timeout=TIMEOUT)
        assert props.status_code == 501  # without --props, as llama.cpp
        assert "--props" in props.json()["error"]["message"]
        assert props.headers["server"] == "llama.cpp"


def test_several_hosts_a_unix_socket_props_and_the_server_header() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sluice-"))  # short: a socket path has 108 bytes
    sock = folder / "sluice.sock"
    try:
        with running_server("--parallel", "2", "--ctx-size", "1024", "--host",
                            f"127.0.0.1,{sock}", "--props", "--seed", "42",
                            "--tags", "base, small,base") as srv:
            listed = httpx.get(srv.base_url + "/v1/models", timeout=TIMEOUT).json()["data"]
            assert listed[0]["tags"] == ["base", "small"]
            tcp = httpx.get(srv.base_url + "/props", timeout=TIMEOUT)
            assert tcp.headers["server"] == "llama.cpp"
            props = tcp.json()
            assert props["total_slots"] == 2
            assert props["default_generation_settings"]["n_ctx"] == 512
            assert props["default_generation_settings"]["params"]["seed"] == 42
            assert props["endpoint_props"] is True
            assert props["modalities"] == {"vision": False, "video": False, "audio": False}
            assert ".gguf" in props["model_path"]
            changed = httpx.post(srv.base_url + "/props", json={"x": 1}, timeout=TIMEOUT)
            assert changed.json() == {"success": True}
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                              timeout=TIMEOUT) as local:
                resp = local.post("http://sluice/completion",
                                  json={"prompt": "Hello", "n_predict": 4})
                assert resp.status_code == 200
                assert resp.json()["tokens_predicted"] == 4
                assert resp.headers["server"] == "llama.cpp"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_chat_template_kwargs_from_the_server_and_the_request(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% if enable_thinking is defined and not enable_thinking %}QUIET "
                        "{% endif %}{% if shout %}LOUD {% endif %}{% for m in messages %}"
                        "{{ m.content }}{% endfor %}{% if add_generation_prompt %}>{% endif %}")
    with running_server("--parallel", "1", "--chat-template-file", str(template),
                        "--chat-template-kwargs", '{"shout": true}',
                        "--reasoning-budget", "0") as srv:
        def render(**extra: Any) -> httpx.Response:
            return httpx.post(srv.base_url + "/apply-template", timeout=TIMEOUT, json={
                "messages": [{"role": "user", "content": "hi"}], **extra})

        # the server's variables; --reasoning-budget 0 sets enable_thinking false
        assert render().json()["prompt"] == "QUIET LOUD hi>"
        assert render(chat_template_kwargs={"shout": False, "enable_thinking": True}
                      ).json()["prompt"] == "hi>"
        bad = render(chat_template_kwargs={"messages": []})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "chat_template_kwargs.messages"
        chat = httpx.post(srv.base_url + "/v1/chat/completions", timeout=TIMEOUT, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "chat_template_kwargs": {"shout": False}})
        assert chat.status_code == 200


def test_dry_xtc_top_n_sigma_and_dynatemp_change_what_is_sampled() -> None:
    """llama.cpp's DRY, XTC, top-n-sigma and dynamic temperature samplers, per request."""
    with running_server("--parallel", "1") as srv:
        def run(**extra: Any) -> dict[str, Any]:
            resp = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT, json={
                "prompt": "one two three one two three one two three one two", "n_predict": 12,
                "temperature": 0, "cache_prompt": False, "return_tokens": True, **extra})
            assert resp.status_code == 200, resp.text
            return resp.json()  # type: ignore[no-any-return]

        plain = run()
        dry = run(dry_multiplier=2.0, dry_allowed_length=1, dry_penalty_last_n=64)
        assert dry["content"] != plain["content"]  # the repetition is penalised
        assert dry["generation_settings"]["dry_multiplier"] == 2.0
        assert run(dry_multiplier=2.0, dry_allowed_length=1, dry_penalty_last_n=64)[
            "content"] == dry["content"]  # deterministic
        xtc = run(xtc_probability=1.0, xtc_threshold=0.01, seed=3)
        assert xtc["tokens"][0] != plain["tokens"][0]  # the top choice is excluded
        # top-n-sigma and dynamic temperature leave a greedy pick alone
        assert run(top_n_sigma=1.0)["content"] == plain["content"]
        assert run(dynatemp_range=0.5)["content"] == plain["content"]
        sampled = run(temperature=0.8, seed=5, top_n_sigma=1.5, dynatemp_range=0.3,
                      dry_multiplier=0.8, xtc_probability=0.5)
        assert sampled["tokens_predicted"] == 12
        for bad in ({"dry_sequence_breakers": ["a\u0000b"]}, {"xtc_probability": 2},
                    {"dry_penalty_last_n": 1 << 20}, {"top_n_sigma": float("nan")}):
            resp = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT,
                              content=json.dumps({"prompt": "x", **bad}))
            assert resp.status_code == 400, (bad, resp.text)
            assert next(iter(bad)) in resp.json()["error"]["message"] or "NaN" in resp.text


LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
         "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. ")


def test_context_shift_generates_past_the_slot_context() -> None:
    # 512 cells over 2 slots: 256 per slot; a ~130-token prompt leaves room for ~125
    with running_server("--parallel", "2", "--ctx-size", "512", "--context-shift",
                        "--keep", "8") as srv:
        body = {"prompt": LOREM * 3, "n_predict": 200, "ignore_eos": True, "temperature": 0}
        out = httpx.post(srv.base_url + "/completion", json=body, timeout=TIMEOUT).json()
        assert 100 < out["tokens_evaluated"] < 200
        assert out["tokens_predicted"] == 200  # beyond 256 - prompt: the context was shifted
        assert out["truncated"] is True  # as llama.cpp reports a shifted reply
        assert out["stop_type"] == "limit"
        assert out["generation_settings"]["n_keep"] == 8  # --keep is the default n_keep
        # streamed as well, with the request's own n_keep and n_discard
        with httpx.stream("POST", srv.base_url + "/completion", timeout=TIMEOUT,
                          json={**body, "stream": True, "n_keep": -1, "n_discard": 16}) as resp:
            events = [json.loads(line[6:]) for line in resp.iter_lines()
                      if line.startswith("data: ")]
        assert events[-1]["stop"] is True
        assert events[-1]["truncated"] is True
        assert events[-1]["tokens_predicted"] == 200
        # a prompt longer than the slot is still refused: a shift cannot make room for it
        long = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT,
                          json={"prompt": LOREM * 6, "n_predict": 4})
        assert long.status_code == 400
        assert "exceeds the available context size" in long.json()["error"]["message"]


def _saved_state_bytes(save_dir: Path, *flags: str) -> tuple[int, str]:
    with running_server("--parallel", "1", "--slot-save-path", str(save_dir), *flags) as srv:
        out = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT, json={
            "prompt": LOREM, "n_predict": 8, "temperature": 0}).json()
        saved = httpx.post(srv.base_url + "/slots/0?action=save", timeout=TIMEOUT,
                           json={"filename": "state.bin"}).json()
        return saved["n_written"], out["content"]


def test_quantized_kv_cache_holds_the_same_slot_in_about_half_the_bytes(tmp_path: Path) -> None:
    plain, _ = _saved_state_bytes(tmp_path)
    quantized, text = _saved_state_bytes(tmp_path, "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on",
                                         "--kv-unified")
    assert text  # the model still generates from a q8_0 cache in one unified buffer
    # q8_0 stores 34 bytes per 32 values where f16 needs 64
    assert 0.4 < quantized / plain < 0.6, (quantized, plain)


def test_llama_cpp_environment_variables_no_jinja_and_no_cache_prompt() -> None:
    env = {"LLAMA_ARG_N_PARALLEL": "3", "LLAMA_ARG_JINJA": "off", "LLAMA_ARG_CACHE_PROMPT": "0",
           "LLAMA_ARG_THREADS_HTTP": "4", "LLAMA_ARG_ENDPOINT_METRICS": "1"}
    with running_server("--model", "smollm2-135m-instruct", env=env) as srv:
        props = httpx.get(srv.base_url + "/props", timeout=TIMEOUT).json()
        assert props["total_slots"] == 3
        assert props["endpoint_metrics"] is True
        # --no-jinja: the model's template is not run; the built-in it looks like is
        assert props["chat_template_name"] == "chatml"
        assert httpx.get(srv.base_url + "/metrics", timeout=TIMEOUT).status_code == 200
        chat = httpx.post(srv.base_url + "/v1/chat/completions", timeout=TIMEOUT, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert chat.status_code == 200
        tools = httpx.post(srv.base_url + "/v1/chat/completions", timeout=TIMEOUT, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})
        assert tools.status_code == 400
        assert "--jinja" in tools.json()["error"]["message"]
        # cache_prompt is off by default now: the same prompt is evaluated again in full
        body = {"prompt": LOREM, "n_predict": 2, "id_slot": 0}
        httpx.post(srv.base_url + "/completion", json=body, timeout=TIMEOUT)
        again = httpx.post(srv.base_url + "/completion", json=body, timeout=TIMEOUT).json()
        assert again["tokens_cached"] == 0
        own = httpx.post(srv.base_url + "/completion", json={**body, "cache_prompt": True},
                         timeout=TIMEOUT).json()
        assert own["tokens_cached"] > 0  # a request's own cache_prompt still wins


def _events(base: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", base + path, json={**body, "stream": True},
                      timeout=TIMEOUT) as resp:
        assert resp.status_code == 200
        return [json.loads(line[6:]) for line in resp.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


def test_progress_timings_per_token_n_indent_and_t_max_predict_ms() -> None:
    with running_server("--model", "smollm2-135m-instruct", "--parallel", "1",
                        "--batch-size", "32") as srv:
        base = srv.base_url
        prompt = LOREM * 2  # ~90 tokens: 3 chunks of 32
        events = _events(base, "/completion", {"prompt": prompt, "n_predict": 3,
                                              "return_progress": True, "cache_prompt": False})
        progress = [e["prompt_progress"] for e in events if "prompt_progress" in e]
        assert len(progress) >= 4  # the start, then one per chunk
        assert progress[0]["processed"] == progress[0]["cache"] == 0
        assert [p["processed"] for p in progress] == sorted({p["processed"] for p in progress})
        assert progress[-1]["processed"] == progress[-1]["total"] == events[-1]["tokens_evaluated"]
        assert all(e["content"] == "" for e in events if "prompt_progress" in e)
        # the chat stream carries it too, on the role chunk and then on empty chunks
        chat = _events(base, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": prompt}], "max_tokens": 2,
            "return_progress": True, "timings_per_token": True})
        assert chat[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chat[0]["prompt_progress"]["processed"] == chat[0]["prompt_progress"]["cache"]
        chat_progress = [c["prompt_progress"] for c in chat if "prompt_progress" in c]
        assert chat_progress[-1]["processed"] == chat_progress[-1]["total"]
        timed = [c["timings"] for c in chat if "timings" in c]
        assert len(timed) >= 2  # each delta's, and the final chunk's
        # timings on every native partial with timings_per_token
        events = _events(base, "/completion", {"prompt": "Hello", "n_predict": 4,
                                              "timings_per_token": True})
        partials = [e for e in events if not e["stop"]]
        assert all("timings" in e for e in partials)
        assert [e["timings"]["predicted_n"] for e in partials] == list(range(1, len(partials) + 1))
        # n_indent: the first line indented less than 4 ends the reply before its text
        forced = 'root ::= "def f():\\n    a = 1\\n  b = 2\\n"'
        out = httpx.post(base + "/completion", timeout=TIMEOUT, json={
            "prompt": "Code:", "grammar": forced, "n_indent": 4, "n_predict": 40}).json()
        assert out["content"] == "def f():\n    a = 1\n  "
        assert out["stop_type"] == "limit"
        # t_max_predict_ms: past the limit, generation ends once a newline was generated
        long = 'root ::= "x\\n" [a-z]{200}'
        out = httpx.post(base + "/completion", timeout=TIMEOUT, json={
            "prompt": "Code:", "grammar": long, "t_max_predict_ms": 1, "n_predict": 150}).json()
        assert out["content"].startswith("x\n")
        assert out["stop_type"] == "limit"
        assert out["tokens_predicted"] < 150


def test_cache_reuse_keeps_what_follows_a_cut_out_middle() -> None:
    with running_server("--parallel", "1", "--cache-reuse", "16", "--cache-ram", "0") as srv:
        def ids(text: str) -> list[int]:
            out: list[int] = httpx.post(srv.base_url + "/tokenize", json={"content": text},
                                        timeout=TIMEOUT).json()["tokens"]
            return out

        one, two, three = (ids(LOREM), ids("The quick brown fox jumps over the lazy dog. " * 4),
                           ids("Pack my box with five dozen liquor jugs, said the sphinx. " * 4))

        def cached(prompt: list[int], **extra: Any) -> int:
            out = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT, json={
                "prompt": prompt, "n_predict": 1, **extra}).json()
            return int(out["tokens_cached"])

        cached(one + two + three)
        # the middle cut out, reuse off for this request: only the common prefix is kept
        assert cached(one + three, n_cache_reuse=0) <= len(one) + 1
        cached(one + two + three)
        # with --cache-reuse: the part after the cut is moved into place, not evaluated again
        assert cached(one + three) >= len(one) + len(three) - 1


def test_server_grammar_and_json_schema_defaults() -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"]}}}
    with running_server("--model", "smollm2-135m-instruct", "--parallel", "1",
                        "--grammar", 'root ::= "yes" | "no"') as srv:
        base = srv.base_url
        out = httpx.post(base + "/completion", timeout=TIMEOUT, json={
            "prompt": "Is water wet?", "n_predict": 8}).json()
        assert out["content"] in ("yes", "no")
        assert out["generation_settings"]["grammar"] == 'root ::= "yes" | "no"'
        own = httpx.post(base + "/completion", timeout=TIMEOUT, json={
            "prompt": "Is water wet?", "n_predict": 8, "grammar": 'root ::= "maybe"'}).json()
        assert own["content"] == "maybe"  # a request's own grammar wins
        chat = httpx.post(base + "/v1/chat/completions", timeout=TIMEOUT, json={
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 40,
            "tools": [weather], "tool_choice": "required"}).json()
        # a tool call replaces the server's grammar instead of clashing with it
        assert chat["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    with running_server("--parallel", "1", "-j", json.dumps(schema)) as srv:
        out = httpx.post(srv.base_url + "/completion", timeout=TIMEOUT, json={
            "prompt": "A number as JSON:", "n_predict": 24}).json()
        assert isinstance(json.loads(out["content"])["n"], int)
        assert out["schema_valid"] is True


def test_schema_strict_closes_every_schemas_objects() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}},
              "required": ["n"]}
    with running_server("--parallel", "1", "--schema-strict") as srv:
        gbnf = httpx.post(srv.base_url + "/grammar", json={"schema": schema},
                          timeout=TIMEOUT).json()["gbnf"]
        assert accepts(gbnf, '{"n": 3}')
        assert not accepts(gbnf, '{"n": 3, "m": 4}')
        comma = httpx.post(srv.base_url + "/tokenize", json={"content": ","},
                           timeout=TIMEOUT).json()["tokens"]
        out = httpx.post(srv.base_url + "/completion", json={
            "prompt": "n as JSON:", "json_schema": schema, "n_predict": 24,
            "logit_bias": [[comma[0], 100]], "temperature": 0}, timeout=TIMEOUT).json()
        assert json.loads(out["content"]).keys() == {"n"}, out["content"]
